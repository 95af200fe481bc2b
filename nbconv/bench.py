"""Benchmark a workload through nbconv's public API, optionally side by side with PyTorch's CPU conv.

``python -m nbconv bench [WORKLOAD] [--peer torch] [--directions ...] [--repeat N] [--cases ...]``
or :func:`run`. Each (case, direction) is timed as users call it (the public function, so spec
look-up, canonicalisation and the filter flip are included), after a warm-up that also compiles.
With a peer, nbconv and the peer run alternately in the same process at the same thread count and
the medians are compared (ratio = peer ms / nbconv ms, > 1 means nbconv is faster); the first
results are also compared numerically, which catches layout and flip mistakes in the peer mapping.

PyTorch is optional and only imported when asked for. Directions follow the stored forward problem
(see ``tuning/workloads/suite.json``): for op 'transpose' the 'grad_input' row is the transposed
convolution's forward pass and is called through ``conv2d_transpose`` / ``F.conv_transpose2d``.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass

import numpy as np

from . import api, dispatch
from .problems import load_workload, workload_path
from .threads import get_num_threads
from .spec import DIRECTIONS, FORWARD, GRAD_INPUT, GRAD_WEIGHTS

#: FP32 peak of the benchmark machine, GFLOP/s: 2 cores (AMD EPYC, Zen 4) x ~2.85 GHz x 2 FMA pipes
#: x 8 lanes (AVX2 width) x 2 flops, i.e. the 182 GFLOP/s measured with an FMA-bound loop.
PEAK_GFLOPS = 182.0

#: Optional pause before each side's turn when alternating with a peer (``--settle``). Thread
#: pools keep spinning after their work (OpenBLAS, which nbconv's GEMM algorithms call through
#: NumPy, for ~0.1 s) and steal the cores from the other library's next call: measured, a torch
#: bmm right after a NumPy matmul 6.5 -> 14 ms, 6.5 ms again after a 0.1 s pause (unshared_lc's
#: torch peer: 88 -> 20 ms). But on a shared machine a pause lets other processes in and the
#: sleeping threads then wait for a scheduler tick to wake (small cases: 0.03 -> 0.2 ms), so the
#: default is plain back-to-back alternation, the steady state of a training loop.
SETTLE_S = 0.0

#: float32 agreement required between nbconv and the peer, relative to the largest |result|.
CHECK_RTOL = 1e-4


@dataclass
class Row:
    case: str
    op: str
    direction: str
    algorithm: str
    ms: float
    gflops: float
    pct_peak: float
    peer_ms: float | None = None
    ratio: float | None = None
    reference_ms: float | None = None  # the workload file's recorded PyTorch time, if any
    max_rel_err: float | None = None  # against the peer's result


def reference_ms(workload):
    """The workload file's ``reference_ms`` mapping (case -> direction -> ms), or {}."""
    with open(workload_path(workload)) as f:
        return json.load(f).get("reference_ms", {})


# ---------------------------------------------------------------------------------------------
# nbconv side: the public function a user would call for (problem, direction)
# ---------------------------------------------------------------------------------------------


def nbconv_call(p, direction, x, w, dy):
    """A zero-argument callable computing ``direction`` of ``p`` through nbconv's API."""
    spec = p.spec()
    kw = dict(border_mode=p.border_mode, subsample=p.subsample, filter_flip=p.filter_flip,
              filter_dilation=p.filter_dilation, num_groups=p.num_groups, unshared=p.unshared)
    if p.nd == 1:
        # 1-D has only causal_conv1d in the API; the gradients go through the same internals
        # (spec cache, canonicalisation, dispatch) the 2-D/3-D public functions use
        causal = spec.pad_hi[2] == 0 and spec.pad_lo[2] == spec.dilated_kernel[2] - 1
        if direction == FORWARD and causal:
            return lambda: api.causal_conv1d(x, w, w.shape, subsample=p.subsample,
                                             filter_flip=p.filter_flip,
                                             filter_dilation=p.filter_dilation,
                                             num_groups=p.num_groups, unshared=p.unshared)
        args = tuple(kw.values())
        if direction == FORWARD:
            return lambda: api._forward(1, x, w, None, None, *args, None)
        if direction == GRAD_INPUT:
            return lambda: api._grad_input(1, dy, w, x.shape, None, *args, None)
        return lambda: api._grad_weights(1, x, dy, w.shape, None, *args, None)
    fwd, gin, gw = {
        2: (api.conv2d, api.conv2d_grad_wrt_inputs, api.conv2d_grad_wrt_weights),
        3: (api.conv3d, api.conv3d_grad_wrt_inputs, api.conv3d_grad_wrt_weights),
    }[p.nd]
    if direction == FORWARD:
        return lambda: fwd(x, w, **kw)
    if direction == GRAD_INPUT:
        if p.op == "transpose" and p.nd == 2:
            tkw = {k: v for k, v in kw.items() if k != "subsample"}
            return lambda: api.conv2d_transpose(dy, w, x.shape, input_dilation=p.subsample, **tkw)
        return lambda: gin(dy, w, x.shape, **kw)
    return lambda: gw(x, dy, w.shape, **kw)


# ---------------------------------------------------------------------------------------------
# PyTorch peer
# ---------------------------------------------------------------------------------------------


class TorchPeer:
    """PyTorch's CPU convolution for a workload problem (cross-correlation, so weights are flipped
    here when the problem flips; a weight gradient is flipped back)."""

    name = "torch"

    def __init__(self, n_threads):
        import torch
        import torch.nn.functional as F

        self.torch, self.F = torch, F
        torch.set_num_threads(n_threads)

    def call(self, p, direction, x, w, dy):
        torch, F = self.torch, self.F
        spec = p.spec()
        nd, ex = p.nd, 3 - p.nd
        stride, dil = list(spec.stride[ex:]), list(spec.dilation[ex:])
        lo, hi = spec.pad_lo[ex:], spec.pad_hi[ex:]
        kaxes = tuple(range(w.ndim - nd, w.ndim))
        # copies, not ascontiguousarray: a flipped length-1 axis counts as contiguous to NumPy
        # but its negative stride is rejected by torch.from_numpy
        wt = torch.from_numpy(np.flip(w, kaxes).copy() if p.filter_flip else w)
        xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)
        unflip = (lambda a: np.flip(a, kaxes).copy()) if p.filter_flip else (lambda a: a)
        if p.unshared:
            return self._unshared(p, direction, xt, wt, dyt, stride, dil, lo, unflip)
        symmetric = lo == hi
        pad = list(lo) if symmetric else [0] * nd
        # F.pad takes (lo, hi) pairs from the last axis backwards
        f_pad = [v for a in reversed(range(nd)) for v in (lo[a], hi[a])]

        def padded(t):
            return t if symmetric else F.pad(t, f_pad)

        conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
        if direction == FORWARD:
            def fn():
                return conv(padded(xt), wt, None, stride, pad, dil, p.num_groups)
            return fn, lambda r: r.numpy()
        if direction == GRAD_INPUT and p.op == "transpose" and symmetric and nd == 2:
            # the transposed conv's forward; output_padding recovers the exact input size
            opad = [x.shape[2 + a] - ((dy.shape[2 + a] - 1) * stride[a] - 2 * lo[a]
                                      + dil[a] * (w.shape[2 + a] - 1) + 1) for a in range(nd)]

            def fn():
                return F.conv_transpose2d(dyt, wt, None, stride, pad, opad, p.num_groups, dil)
            return fn, lambda r: r.numpy()
        xp = padded(xt)
        mask = [direction == GRAD_INPUT, direction == GRAD_WEIGHTS, False]
        backward = torch.ops.aten.convolution_backward

        def fn():
            return backward(dyt, xp, wt, None, stride, pad, dil, False, [0] * nd, p.num_groups, mask)
        if direction == GRAD_INPUT:
            # the gradient of the explicitly padded input, cropped back to the input
            crop = (slice(None), slice(None)) + tuple(
                slice(lo[a] * (not symmetric), lo[a] * (not symmetric) + x.shape[2 + a]) for a in range(nd))
            return fn, lambda r: np.ascontiguousarray(r[0].numpy()[crop])
        return fn, lambda r: unflip(r[1].numpy())

    def _unshared(self, p, direction, xt, wt, dyt, stride, dil, lo, unflip):
        """Locally connected layer as unfold + per-position contraction (2-D only), autograd."""
        torch, F = self.torch, self.F
        if p.nd != 2:
            raise NotImplementedError("the torch peer maps unshared convolution in 2-D only")
        O, oh, ow, cg, kh, kw = wt.shape
        if p.num_groups != 1:
            raise NotImplementedError("the torch peer maps unshared convolution with 1 group only")
        w2 = wt.reshape(O, oh * ow, cg * kh * kw)

        def forward(xv, wv):
            cols = F.unfold(xv, (kh, kw), dilation=dil, padding=list(lo), stride=stride)  # (N, K, L)
            # one (N x K) @ (K x O) product per output position (einsum picked a 10x slower plan)
            y = torch.bmm(cols.permute(2, 0, 1), wv.permute(1, 2, 0))  # (L, N, O)
            return y.permute(1, 2, 0).reshape(xv.shape[0], O, oh, ow)

        if direction == FORWARD:
            return (lambda: forward(xt, w2)), lambda r: r.numpy()
        xg = xt.clone().requires_grad_(direction == GRAD_INPUT)
        wg = w2.clone().requires_grad_(direction == GRAD_WEIGHTS)
        y = forward(xg, wg)
        target = xg if direction == GRAD_INPUT else wg

        def fn():
            return torch.autograd.grad(y, target, dyt, retain_graph=True)[0]
        if direction == GRAD_INPUT:
            return fn, lambda r: r.numpy()
        return fn, lambda r: unflip(r.reshape(O, oh, ow, cg, kh, kw).numpy())


PEERS = {"torch": TorchPeer}


# ---------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _max_rel_err(ours, theirs):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    if ours.shape != theirs.shape:
        return math.inf
    scale = max(1.0, float(np.abs(theirs).max())) if theirs.size else 1.0
    return float(np.abs(ours - theirs).max()) / scale if ours.size else 0.0


def run(workload="suite", peer=None, directions=None, repeat=10, cases=None, warmup=2,
        on_row=None, settle=SETTLE_S):
    """Time every (case, direction); returns a list of :class:`Row`.

    ``peer``: None or 'torch'. ``cases``: names to keep (default all). ``on_row(row)`` is called
    as each row is ready (the CLI prints with it). ``settle``: seconds of pause before each timed
    call when alternating with a peer. Raises ImportError if the peer is missing.
    """
    name, problems = load_workload(workload)
    refs = reference_ms(workload)
    directions = list(directions or DIRECTIONS)
    if cases:
        unknown = set(cases) - {p.name for p in problems}
        if unknown:
            raise ValueError(f"no case(s) {sorted(unknown)} in workload {name!r}")
        problems = [p for p in problems if p.name in cases]
    peer_impl = PEERS[peer](get_num_threads()) if peer else None
    rows = []
    for p in problems:
        x, w, dy = p.arrays()
        for d in directions:
            spec = p.spec(d)
            ours = nbconv_call(p, d, x, w, dy)
            theirs = convert = None
            if peer_impl is not None:
                try:
                    theirs, convert = peer_impl.call(p, d, x, w, dy)
                except NotImplementedError:
                    theirs = None
            out = None
            for _ in range(max(1, warmup)):
                out = ours()
                if theirs is not None:
                    peer_out = theirs()
            t_ours, t_peer = [], []
            for _ in range(repeat):
                if theirs is None:
                    t_ours.append(_timed(ours)[0])
                    continue
                for fn, times in ((ours, t_ours), (theirs, t_peer)):
                    if settle:
                        # let the other side's threads stop spinning, then one untimed call to
                        # wake this side's threads and caches again
                        time.sleep(settle)
                        fn()
                    times.append(_timed(fn)[0])
            ms = float(np.median(t_ours)) * 1e3
            gflops = spec.flops() / (ms * 1e-3) / 1e9
            row = Row(
                case=p.name, op=p.op, direction=d, algorithm=dispatch.choose(spec).name, ms=ms,
                gflops=gflops, pct_peak=100.0 * gflops / PEAK_GFLOPS,
                reference_ms=refs.get(p.name, {}).get(d),
            )
            if theirs is not None:
                row.peer_ms = float(np.median(t_peer)) * 1e3
                row.ratio = row.peer_ms / ms
                row.max_rel_err = _max_rel_err(out, convert(peer_out))
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows


def geomean_ratio(rows):
    ratios = [r.ratio for r in rows if r.ratio]
    return math.exp(sum(math.log(v) for v in ratios) / len(ratios)) if ratios else None


# ---------------------------------------------------------------------------------------------
# table
# ---------------------------------------------------------------------------------------------

HEADER = (f"{'case':15s} {'direction':13s} {'algorithm':13s} {'ms':>9s} {'GFLOP/s':>8s} {'%peak':>6s}"
          f" {'peer ms':>9s} {'ratio':>6s} {'ref ms':>8s}  check")


def format_row(r):
    direction = r.direction + ("*" if r.op == "transpose" and r.direction == GRAD_INPUT else "")
    peer = f"{r.peer_ms:9.3f} {r.ratio:6.2f}" if r.peer_ms is not None else f"{'-':>9s} {'-':>6s}"
    ref = f"{r.reference_ms:8.3f}" if r.reference_ms is not None else f"{'-':>8s}"
    if r.max_rel_err is None:
        check = "-"
    else:
        check = ("ok" if r.max_rel_err <= CHECK_RTOL else "MISMATCH") + f" {r.max_rel_err:.1e}"
    return (f"{r.case:15s} {direction:13s} {r.algorithm:13s} {r.ms:9.3f} {r.gflops:8.1f} "
            f"{r.pct_peak:6.1f} {peer} {ref}  {check}")


def _load():
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def main(args):
    """The ``bench`` subcommand (argparse namespace from :mod:`nbconv.cli`)."""
    peer = args.peer
    if peer:
        try:
            __import__(peer)
        except ImportError:
            print(f"peer {peer!r} is not installed: timing nbconv only")
            peer = None
    name = load_workload(args.workload)[0]
    print(f"nbconv bench: workload {name!r}, threads {get_num_threads()}, peer {peer or 'none'}, "
          f"repeat {args.repeat} (medians), settle {args.settle:g} s, peak {PEAK_GFLOPS:g} GFLOP/s")
    print(f"load average before: {_load()}")
    print(HEADER)
    print("-" * len(HEADER))
    rows = run(args.workload, peer=peer, directions=args.directions, repeat=args.repeat,
               cases=args.cases, on_row=lambda r: print(format_row(r), flush=True),
               settle=args.settle)
    print("-" * len(HEADER))
    g = geomean_ratio(rows)
    if g is not None:
        print(f"geometric mean of ratios (peer ms / nbconv ms, > 1: nbconv faster): {g:.3f} "
              f"over {sum(1 for r in rows if r.ratio)} rows")
    if any(r.op == "transpose" for r in rows):
        print("* transposed convolution: grad_input of the stored problem = the transpose's forward")
    bad = [r for r in rows if r.max_rel_err is not None and r.max_rel_err > CHECK_RTOL]
    print(f"load average after: {_load()}")
    if bad:
        print(f"{len(bad)} row(s) disagree with the peer beyond rtol {CHECK_RTOL:g}")
        return 1
    return 0
