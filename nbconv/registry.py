"""The registry of convolution algorithms.

An :class:`Algorithm` declares its device, the directions it implements, ``supports(spec)`` and the
workspace it needs; ``run[direction](spec, a, b)`` computes the result on canonical arrays:

    forward       run(spec, x, w)   -> y
    grad_input    run(spec, dy, w)  -> dx
    grad_weights  run(spec, x, dy)  -> dw

Arrays are C-contiguous, of ``spec.dtype``, in the canonical 3-spatial-axis layout, and weights
come already flipped when ``spec.flip`` (see :mod:`nbconv.dispatch`), so an algorithm computes
cross-correlation, unless it is registered with ``flips=True``: it then gets the weights as the
user passed them and applies ``spec.flip`` itself. A new algorithm is one module plus one :func:`register` call; the test-suite
parametrizes over :func:`algorithms`, so it is tested the day it is registered.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

from .spec import DIRECTIONS

DEVICES = ("cpu", "cuda")


def _always(spec):
    return True


def _no_workspace(spec):
    return 0


@dataclass(frozen=True)
class Algorithm:
    name: str
    device: str
    run: Mapping[str, Callable]  # direction -> callable(spec, a, b) -> ndarray
    supports: Callable = _always  # spec -> bool (the direction is part of the spec)
    workspace: Callable = _no_workspace  # spec -> bytes of scratch memory beyond the result
    deterministic: bool = True
    # True when only the definition's terms are summed, so a NaN/Inf operand element makes exactly
    # the outputs that depend on it non-finite; False allows it to spread further (padding zeros
    # times a NaN weight, Winograd/FFT transforms), never to vanish (tests/test_nonfinite.py)
    exact_nonfinite: bool = False
    # True when the algorithm applies ``spec.flip`` itself: it takes the user's weights as they
    # are and returns a weight gradient in the user's orientation, sparing dispatch a flipped
    # copy of the weights (unshared weights are the largest operand: ~1 ms a copy on unshared_lc)
    flips: bool = False
    # True when ``run`` does its arithmetic in Numba kernels only (NumPy merely allocates), which
    # cannot raise NumPy's floating-point warnings: dispatch then skips ``np.errstate`` around it,
    # ~0.9 us per call, a sixth of LeNet's whole forward call
    numba_only: bool = False
    description: str = ""
    # spec -> predicted seconds; the `guess` policy ranks applicable algorithms by it
    estimate: Callable = None
    directions: frozenset = field(init=False)

    def __post_init__(self):
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        bad = set(self.run) - set(DIRECTIONS)
        if bad:
            raise ValueError(f"unknown directions {sorted(bad)} for algorithm {self.name!r}")
        object.__setattr__(self, "directions", frozenset(self.run))

    def compute(self, spec, a, b):
        """``run[spec.direction]`` on canonical operands whose weights are already flipped when
        ``spec.flip`` (the contract of every algorithm that does not flip itself)."""
        return self.run[spec.direction](spec.correlation if self.flips else spec, a, b)

    def applicable(self, spec):
        """True when this algorithm implements ``spec.direction`` and supports the problem."""
        return spec.direction in self.directions and bool(self.supports(spec))


_REGISTRY: dict = {}


def register(algorithm: Algorithm) -> Algorithm:
    key = (algorithm.device, algorithm.name)
    if key in _REGISTRY:
        raise ValueError(f"algorithm {algorithm.name!r} is already registered for {algorithm.device}")
    _REGISTRY[key] = algorithm
    return algorithm


def algorithms(device=None, direction=None):
    """Registered algorithms, in registration order (which is also the tie-break order)."""
    return [
        a
        for a in _REGISTRY.values()
        if (device is None or a.device == device) and (direction is None or direction in a.directions)
    ]


def names(device=None, direction=None):
    return [a.name for a in algorithms(device, direction)]


def get(name, device="cpu"):
    try:
        return _REGISTRY[(device, name)]
    except KeyError:
        known = ", ".join(names(device)) or "none"
        raise ValueError(f"algo={name!r} is not a registered {device} algorithm (known: {known})") from None


def candidates(spec, device="cpu"):
    """The algorithms able to compute ``spec`` on ``device``, in registration order."""
    return [a for a in algorithms(device) if a.applicable(spec)]


def guess(spec, device="cpu"):
    """The heuristic choice: the applicable algorithm with the lowest ``estimate(spec)``.

    Algorithms without an estimate rank after those with one; ties keep registration order, so
    the choice is deterministic. Returns None when nothing applies.
    """
    best, best_key = None, None
    for i, a in enumerate(candidates(spec, device)):
        key = (0, a.estimate(spec), i) if a.estimate is not None else (1, 0.0, i)
        if best_key is None or key < best_key:
            best, best_key = a, key
    return best
