"""flat: the blocked paths the registry sweeps' 1-3 channels per group do not reach.

Forward and grad-weights take output channels three at a time and grad-input takes input
channels three at a time, with a 1- or 2-channel remainder per group; taps go four (or eight) per
pass with a remainder. Here groups have 4-8 channels on both sides and kernels 1-27 taps.
"""
import numpy as np
from helpers import Sweep, check_directions, random_case

from nbconv.cpu import flat
from nbconv.spec import build


def test_channel_blocks_and_remainders_against_the_reference():
    rng = np.random.default_rng(9300)
    sweep = Sweep("flat")
    for idx in range(36):
        nd = 2 if idx % 3 else 3
        groups = int(rng.choice([1, 2]))
        case = random_case(rng, nd, idx, unshared=False, groups=groups, max_stride=1,
                           cg=int(rng.integers(4, 9)), og=int(rng.integers(4, 9)),
                           kmax=5 if nd == 2 else 3, batch=int(rng.integers(1, 3)))
        sweep.run(f"[{idx}] {case!r}", lambda case=case: check_directions(case, rng, "flat"))
    sweep.check()


def test_grad_input_margin_is_the_largest_tap_offset():
    """dy is laid from the margin m on and read at m - offset >= 0: m must be the last tap's
    offset, whatever the flip (which only reorders the taps)."""
    for flip in (False, True):
        spec = build("grad_input", 3, (1, 2, 5, 6, 7), (3, 2, 2, 3, 2), border_mode=(1, 2, 0),
                     subsample=1, filter_dilation=(2, 1, 3), num_groups=1, unshared=False,
                     filter_flip=flip, dtype=np.float64, names={"x": "x", "w": "w"})
        Dp, Hp, Wp, _ = flat._grid(spec)
        offs = flat._tap_offsets(2, 3, 2, 2, 1, 3, Hp, Wp, flip)
        m, Lq = flat._adjoint_grid(spec)
        assert m == offs.max() and min(m - offs) == 0
        assert Lq == ((5 - 1) * Hp + 6 - 1) * Wp + 7
