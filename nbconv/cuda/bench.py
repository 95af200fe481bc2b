"""GPU benchmark: the CUDA algorithms against PyTorch's cuDNN on a workload (default: the suite).

    python -m nbconv.cuda.bench                        # suite.json, every direction, chosen algorithm
    python -m nbconv.cuda.bench --algos all            # every applicable CUDA algorithm per case
    python -m nbconv.cuda.bench resnet50 --directions forward --repeat 50

Per case and direction: the algorithm (the default choice, marked ``*``, or each applicable one),
the median of ``--repeat`` runs timed with CUDA events (after a warm-up that includes the JIT
compilation, reported separately), GFLOP/s, PyTorch's time for the same problem (cuDNN, TF32
off, ``cudnn.benchmark`` on so cuDNN picks its fastest algorithm) and the ratio nbconv / cuDNN,
and the relative difference of the two results (``--check``).

The kernels are timed on canonical device operands, as the registry runs them (no host transfer,
no canonicalisation); both sides compute cross-correlation of the same arrays. PyTorch pads
symmetrically only: for asymmetric pads its input is padded once before timing. Locally connected
(unshared) problems have no cuDNN peer. Exits with a message (status 2) when there is no GPU;
without PyTorch (or a CUDA build of it) the peer columns are left out.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from ..problems import load_workload
from ..spec import DIRECTIONS, FORWARD, GRAD_INPUT, GRAD_WEIGHTS


def _gpu_or_reason():
    try:
        from numba import cuda

        if cuda.is_available():
            return None
        return "numba.cuda finds no CUDA GPU (driver or device missing)"
    except Exception as exc:  # noqa: BLE001  (a broken CUDA install is no GPU either)
        return f"numba.cuda cannot be used: {exc}"


def _device_name():
    from numba import cuda

    try:
        dev = cuda.get_current_device()
    except AttributeError:  # the simulator
        return "CUDA simulator"
    name = dev.name.decode() if isinstance(dev.name, bytes) else dev.name
    return f"{name}, cc {dev.compute_capability}"


def _torch_or_reason():
    try:
        import torch
    except ImportError:
        return None, "PyTorch is not installed"
    if not torch.cuda.is_available():
        return None, "PyTorch has no CUDA device"
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    return torch, None


def _time_numba(fn, repeat):
    """Median milliseconds of ``fn`` by CUDA events, as the tuner times candidates."""
    from ..autotune.timing import CudaEventTimer

    timer = CudaEventTimer()
    return statistics.median([timer(None, fn) * 1e3 for _ in range(repeat)])


def _time_torch(torch, fn, repeat):
    """The same for PyTorch: events on its current stream, after a synchronisation."""
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()  # earlier work (the warm-up) stays out of the interval
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


class _Peer:
    """The same problem in PyTorch (cuDNN): a thunk per direction and its result as NumPy."""

    def __init__(self, torch, spec, x, w, dy, dev="cuda"):
        nd = spec.nd
        ex = 3 - nd
        self.torch = torch
        lo, hi = spec.pad_lo[ex:], spec.pad_hi[ex:]
        xt = torch.as_tensor(x.reshape(spec.user_x_shape), device=dev)
        self.crop = None
        if lo != hi:  # pre-pad (outside the timing), then no padding
            pads = []
            for a, b in zip(reversed(lo), reversed(hi)):
                pads += [a, b]
            xt = torch.nn.functional.pad(xt, pads)
            self.crop = tuple(slice(a, a + n) for a, n in zip(lo, spec.in_size[ex:]))
            padding = [0] * nd
        else:
            padding = list(lo)
        self.x = xt.contiguous()
        self.w = torch.as_tensor(w.reshape(spec.user_w_shape), device=dev)
        self.dy = torch.as_tensor(dy.reshape(spec.user_y_shape), device=dev)
        conv = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d,
                3: torch.nn.functional.conv3d}[nd]
        stride, dil, groups = list(spec.stride[ex:]), list(spec.dilation[ex:]), spec.groups
        self.fns = {
            FORWARD: lambda: conv(self.x, self.w, None, stride, padding, dil, groups),
            GRAD_INPUT: lambda: torch.ops.aten.convolution_backward(
                self.dy, self.x, self.w, None, stride, padding, dil, False, [0] * nd, groups,
                [True, False, False])[0],
            GRAD_WEIGHTS: lambda: torch.ops.aten.convolution_backward(
                self.dy, self.x, self.w, None, stride, padding, dil, False, [0] * nd, groups,
                [False, True, False])[1],
        }

    def result(self, direction):
        out = self.fns[direction]()
        if direction == GRAD_INPUT and self.crop is not None:
            out = out[(Ellipsis,) + self.crop]
        return out.cpu().numpy()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m nbconv.cuda.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workload", nargs="?", default="suite", help="built-in workload or JSON path")
    parser.add_argument("--directions", nargs="+", choices=DIRECTIONS, default=list(DIRECTIONS))
    parser.add_argument("--algos", default="auto",
                        help="'auto' (the default choice), 'all' (every applicable CUDA algorithm) "
                             "or a comma-separated list of names")
    parser.add_argument("--repeat", type=int, default=20, help="timed runs per measurement (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs after the first")
    parser.add_argument("--no-peer", action="store_true", help="do not time PyTorch/cuDNN")
    parser.add_argument("--no-check", action="store_true", help="do not compare results with PyTorch")
    parser.add_argument("--problems", nargs="+", metavar="NAME", help="only these problems of the workload")
    args = parser.parse_args(argv)

    reason = _gpu_or_reason()
    if reason:
        print(f"nbconv.cuda.bench: no GPU to benchmark on ({reason}).", file=sys.stderr)
        return 2

    from numba import cuda

    from .. import registry
    from . import front, launch

    torch, why = (None, "--no-peer") if args.no_peer else _torch_or_reason()
    name, problems = load_workload(args.workload)
    if args.problems:
        problems = [p for p in problems if p.name in set(args.problems)]
    print(f"nbconv.cuda.bench: workload {name!r}, {len(problems)} problems; device {_device_name()} "
          f"({launch.sm_count()} SMs)")
    print(f"peer: {'PyTorch ' + torch.__version__ + ' cuDNN ' + str(torch.backends.cudnn.version()) if torch else 'none (' + why + ')'}"
          f"; medians of {args.repeat} runs timed with CUDA events; * = the default choice")
    head = (f"{'problem':16s} {'direction':13s} {'algorithm':15s} {'1st(ms)':>9s} {'median':>9s} "
            f"{'GFLOP/s':>8s} {'cuDNN':>9s} {'ratio':>6s} {'rel.err':>8s}  shapes")
    print(head)
    print("-" * len(head))
    for p in problems:
        for d in args.directions:
            spec = p.spec(d)
            x, w, dy = (a.reshape(s) for a, s in zip(p.arrays(), (spec.x_shape, spec.w_shape, spec.y_shape)))
            a, b = {FORWARD: (x, w), GRAD_INPUT: (dy, w), GRAD_WEIGHTS: (x, dy)}[d]
            da, db = cuda.to_device(np.ascontiguousarray(a)), cuda.to_device(np.ascontiguousarray(b))
            chosen = front.choose(spec)
            if args.algos == "auto":
                algs = [chosen]
            elif args.algos == "all":
                algs = registry.candidates(spec, "cuda")
            else:
                algs = [registry.get(n.strip(), "cuda") for n in args.algos.split(",")]
                algs = [g for g in algs if g.applicable(spec)]
            peer_ms, peer_out = None, None
            if torch is not None and not spec.unshared:
                try:
                    peer = _Peer(torch, spec, x, w, dy)
                    peer_out = None if args.no_check else peer.result(d)
                    for _ in range(args.warmup):
                        peer.fns[d]()
                    peer_ms = _time_torch(torch, peer.fns[d], args.repeat)
                except Exception as exc:  # noqa: BLE001  (report and go on)
                    print(f"  (PyTorch failed on {p.name} {d}: {exc})")
            for alg in algs:
                run = alg.run[d]
                t0 = time.perf_counter()
                try:
                    out = run(spec, da, db)
                    cuda.synchronize()
                except Exception as exc:  # noqa: BLE001
                    print(f"{p.name:16s} {d:13s} {alg.name:15s} FAILED: {type(exc).__name__}: {exc}")
                    continue
                first = (time.perf_counter() - t0) * 1e3
                for _ in range(args.warmup):
                    run(spec, da, db)
                ms = _time_numba(lambda: run(spec, da, db), args.repeat)  # noqa: B023
                err = ""
                if peer_out is not None:
                    mine = out.copy_to_host().reshape(peer_out.shape)
                    scale = float(np.abs(peer_out).max()) or 1.0
                    err = f"{float(np.abs(mine - peer_out).max()) / scale:8.1e}"
                mark = "*" if alg is chosen else " "
                cudnn = f"{peer_ms:9.3f}" if peer_ms else f"{'-':>9s}"
                ratio = f"{ms / peer_ms:6.2f}" if peer_ms else f"{'-':>6s}"
                gflops = f"{spec.flops() / ms / 1e6:8.0f}" if ms > 0 else f"{'-':>8s}"
                print(f"{p.name:16s} {d:13s} {alg.name + mark:15s} {first:9.1f} {ms:9.3f} "
                      f"{gflops} {cudnn} {ratio} {err:>8s}  {spec.describe()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
