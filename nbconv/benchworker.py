"""One side of an interleaved benchmark: a worker process that times calls on request.

The coordinator (:mod:`nbconv.bench`) starts one worker per side: nbconv from a given build (the
working tree, or a git revision extracted elsewhere for ``nbconv bench compare --against REV``) or
PyTorch, the peer. Each worker holds its own arrays, thread pools and OpenMP runtime, so no side
ever runs next to another side's runtime in the same process (why: see ``nbconv.bench``).

This file is run *by path* with the interpreter (``python .../benchworker.py --side nbconv
--build DIR``), so the ``import nbconv`` below finds the build under test, not necessarily the
package this file belongs to; it must therefore use only what every benchmarked build has:
``nbconv.problems.Problem``, ``nbconv.api``, ``nbconv.dispatch.choose`` and the spec. The same
functions are imported in-process by ``nbconv.bench`` (no peer, no isolation).

Protocol: one JSON object per line on stdin, one JSON reply per line on the original stdout (the
Python-level stdout is redirected to stderr so that nothing printed by a library can corrupt the
channel). ``nbconv`` is imported lazily: the torch side must load PyTorch (and its bundled libgomp)
*before* nbconv, as a process with only torch in it would.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback

import numpy as np

# ---------------------------------------------------------------------------------------------
# nbconv side: the public function a user would call for (problem, direction)
# ---------------------------------------------------------------------------------------------


def nbconv_call(p, direction, x, w, dy, algo=None):
    """A zero-argument callable computing ``direction`` of ``p`` through nbconv's API (``algo``
    forces an algorithm, as the public ``algo=`` keyword does)."""
    from nbconv import api
    from nbconv.spec import FORWARD, GRAD_INPUT

    spec = p.spec()
    kw = {"border_mode": p.border_mode, "subsample": p.subsample, "filter_flip": p.filter_flip,
          "filter_dilation": p.filter_dilation, "num_groups": p.num_groups, "unshared": p.unshared}
    if p.nd == 1:
        # 1-D has only causal_conv1d in the API; the gradients go through the same internals
        # (spec cache, canonicalisation, dispatch) the 2-D/3-D public functions use
        causal = spec.pad_hi[2] == 0 and spec.pad_lo[2] == spec.dilated_kernel[2] - 1
        if direction == FORWARD and causal:
            return lambda: api.causal_conv1d(x, w, w.shape, subsample=p.subsample,
                                             filter_flip=p.filter_flip,
                                             filter_dilation=p.filter_dilation,
                                             num_groups=p.num_groups, unshared=p.unshared,
                                             algo=algo)
        args = tuple(kw.values())
        if direction == FORWARD:
            return lambda: api._forward(1, x, w, None, None, *args, algo)
        if direction == GRAD_INPUT:
            return lambda: api._grad_input(1, dy, w, x.shape, None, *args, algo)
        return lambda: api._grad_weights(1, x, dy, w.shape, None, *args, algo)
    fwd, gin, gw = {
        2: (api.conv2d, api.conv2d_grad_wrt_inputs, api.conv2d_grad_wrt_weights),
        3: (api.conv3d, api.conv3d_grad_wrt_inputs, api.conv3d_grad_wrt_weights),
    }[p.nd]
    if direction == FORWARD:
        return lambda: fwd(x, w, **kw, algo=algo)
    if direction == GRAD_INPUT:
        if p.op == "transpose" and p.nd == 2:
            tkw = {k: v for k, v in kw.items() if k != "subsample"}
            return lambda: api.conv2d_transpose(dy, w, x.shape, input_dilation=p.subsample,
                                                **tkw, algo=algo)
        return lambda: gin(dy, w, x.shape, **kw, algo=algo)
    return lambda: gw(x, dy, w.shape, **kw, algo=algo)


def problem_arrays(p, seed=0):
    """Random user-shaped x, w, dy (the same numbers for every direction and every side)."""
    spec = p.spec()
    rng = np.random.default_rng(seed)
    return tuple(
        rng.standard_normal(shape, dtype=np.float32).astype(spec.np_dtype)
        for shape in (spec.user_x_shape, spec.user_w_shape, spec.user_y_shape)
    )


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
        """(fn, convert): ``fn()`` computes the result, ``convert(fn())`` gives nbconv's layout.
        Raises NotImplementedError for problems the mapping does not cover."""
        from nbconv.spec import FORWARD, GRAD_INPUT, GRAD_WEIGHTS

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
        from nbconv.spec import FORWARD, GRAD_INPUT, GRAD_WEIGHTS

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
# sides
# ---------------------------------------------------------------------------------------------


def forced_algo(force, case, direction):
    """The algorithm ``force`` names for (case, direction): keys 'CASE' or 'CASE:DIRECTION'."""
    if not force:
        return None
    return force.get(f"{case}:{direction}", force.get(case))


class NbconvSide:
    """nbconv, as imported in this process. ``force`` maps 'CASE[:DIRECTION]' to an algorithm name
    (only to validate the regression gate: it makes one case deliberately slower)."""

    name = "nbconv"

    def __init__(self, n_threads=None, force=None):
        import nbconv
        from nbconv import threads

        if n_threads:
            threads.set_num_threads(n_threads)
        self.nbconv, self.force = nbconv, dict(force or {})

    def call(self, p, direction, x, w, dy):
        algo = forced_algo(self.force, p.name, direction)
        return nbconv_call(p, direction, x, w, dy, algo), lambda r: r

    def algorithm(self, p, direction):
        from nbconv import dispatch

        return dispatch.choose(p.spec(direction), forced_algo(self.force, p.name, direction)).name

    def info(self):
        import llvmlite
        import numba

        from nbconv import threads

        return {"side": "nbconv", "version": getattr(self.nbconv, "__version__", None),
                "file": os.path.dirname(os.path.abspath(self.nbconv.__file__)),
                "numba": numba.__version__, "llvmlite": llvmlite.__version__,
                "numpy": np.__version__, "threads": threads.get_num_threads(),
                "force": self.force}


class TorchSide:
    name = "torch"

    def __init__(self, n_threads=None):
        self.peer = TorchPeer(n_threads or os.cpu_count())

    def call(self, p, direction, x, w, dy):
        return self.peer.call(p, direction, x, w, dy)

    def algorithm(self, p, direction):
        return "torch"

    def info(self):
        torch = self.peer.torch
        return {"side": "torch", "version": torch.__version__, "numpy": np.__version__,
                "threads": torch.get_num_threads(),
                "parallel_info": torch.__config__.parallel_info().strip().splitlines()[:4]}


def make_side(kind, n_threads=None, force=None):
    if kind == "nbconv":
        return NbconvSide(n_threads, force)
    if kind == "torch":
        return TorchSide(n_threads)
    raise ValueError(f"unknown side {kind!r}")


# ---------------------------------------------------------------------------------------------
# serving requests
# ---------------------------------------------------------------------------------------------


class Server:
    """Holds the prepared calls of one side, keyed by (case, direction)."""

    def __init__(self, side):
        self.side = side
        self.problems = {}
        self.calls = {}  # key -> (fn, convert, last result)
        self.arrays = {}

    def setup(self, problems):
        from nbconv.problems import Problem

        self.problems = {d["name"]: Problem.from_dict(d) for d in problems}
        self.calls.clear()
        self.arrays.clear()
        return {}

    def prepare(self, case, direction, warmup=2):
        """Build the call, run it ``warmup`` times (compiling); report the first and last time."""
        p = self.problems[case]
        if case not in self.arrays:
            self.arrays = {case: problem_arrays(p)}  # one case's arrays alive at a time
            self.calls = {}
        x, w, dy = self.arrays[case]
        try:
            fn, convert = self.side.call(p, direction, x, w, dy)
        except NotImplementedError as e:
            return {"supported": False, "why": str(e)}
        times, out = [], None
        for _ in range(max(1, warmup)):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        self.calls[(case, direction)] = [fn, convert, out]
        return {"supported": True, "algorithm": self.side.algorithm(p, direction),
                "first_s": times[0], "last_s": times[-1]}

    def time(self, case, direction, calls=1, warm=1):
        """``warm`` untimed calls, then ``calls`` timed ones (seconds)."""
        entry = self.calls[(case, direction)]
        fn = entry[0]
        for _ in range(warm):
            fn()
        times = []
        out = None
        for _ in range(calls):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        entry[2] = out
        return {"times": times}

    def save(self, case, direction, path):
        fn, convert, out = self.calls[(case, direction)]
        np.save(path, np.asarray(convert(out if out is not None else fn())))
        return {"path": path}

    def handle(self, msg):
        cmd = msg.pop("cmd")
        if cmd == "info":
            return self.side.info()
        if cmd == "setup":
            return self.setup(**msg)
        if cmd == "prepare":
            return self.prepare(**msg)
        if cmd == "time":
            return self.time(**msg)
        if cmd == "save":
            return self.save(**msg)
        raise ValueError(f"unknown command {cmd!r}")


def serve(side, fin, fout):
    server = Server(side)
    for line in fin:
        msg = json.loads(line)
        if msg.get("cmd") == "quit":
            break
        try:
            reply = {"ok": True, **server.handle(msg)}
        except Exception as e:  # reported to the coordinator, which raises it there
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        fout.write(json.dumps(reply, default=_jsonable) + "\n")
        fout.flush()


def _jsonable(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return str(v)


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", choices=["nbconv", "torch"], required=True)
    parser.add_argument("--build", help="directory holding the nbconv package to import")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--force", default="{}", help="JSON: {'CASE[:DIRECTION]': ALGO}")
    args = parser.parse_args(argv)
    # the protocol owns the real stdout; anything a library prints goes to stderr
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout = sys.stderr
    if args.build:
        sys.path.insert(0, os.path.abspath(args.build))
    if args.side == "torch":
        import torch  # noqa: F401  (first, as in a process with torch alone: see the docstring)
    side = make_side(args.side, args.threads, json.loads(args.force))
    channel.write(json.dumps({"ok": True, "ready": True}) + "\n")
    channel.flush()
    serve(side, sys.stdin, channel)


if __name__ == "__main__":
    # run by path: drop this file's directory (nbconv/) from sys.path so that its modules cannot
    # be imported as top-level modules, and nbconv comes from --build (or the installed package)
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    main()
