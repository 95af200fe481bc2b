"""Peak memory of one call, as the operating system sees it (Linux).

tracemalloc sees NumPy's allocations but not PyTorch's or Numba's, so both sides are measured the
same way: reset the process's resident-set high-water mark (``/proc/self/clear_refs``, value 5),
run the call, and read ``VmHWM`` against the ``VmRSS`` before it. Freshly allocated pages count
only once touched, which is what a convolution's buffers are. Run one measurement per fresh process
after a warm-up call (JIT compilation, BLAS buffers and allocator caches are then in place and
excluded); the figure includes the result array.
"""
from __future__ import annotations

import gc
import os


def supported():
    return os.path.exists("/proc/self/clear_refs") and os.access("/proc/self/clear_refs", os.W_OK)


def _status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_bytes(fn):
    """Bytes by which the resident set grew at its peak while ``fn()`` ran (its result is kept
    until the measurement is read, then released)."""
    if not supported():
        raise RuntimeError("peak memory needs Linux's /proc/self/clear_refs")
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status("VmRSS")
    out = fn()
    peak = _status("VmHWM")
    del out
    return max(0, peak - before)


_CHILD = r'''
import json, sys
side, workload, case, direction = sys.argv[1:5]
from nbconv.memory import peak_bytes
from nbconv.problems import load_workload
p = [q for q in load_workload(workload)[1] if q.name == case][0]
if side == "nbconv":
    from nbconv import dispatch
    spec, a, b = p.operands(direction)
    fn = lambda: dispatch.execute(spec, a, b)
else:
    from nbconv.bench import TorchPeer
    from nbconv.threads import get_num_threads
    x, w, dy = p.arrays()
    fn = TorchPeer(get_num_threads()).call(p, direction, x, w, dy)[0]
fn()
fn()
if side == "nbconv":
    # im2col's and winograd's scratch block is kept between calls: drop it so that it counts
    from nbconv.cpu import im2col
    im2col.release_scratch()
print(json.dumps(peak_bytes(fn)))
'''

# glibc serves large blocks with mmap, but raises that threshold (up to 32 MiB) after the first
# frees and then keeps freed blocks in the heap, so a second call would reuse pages already
# resident and show no growth at all. A fixed threshold keeps every run's buffers visible.
_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def measure(workload, case, direction="forward", side="nbconv"):
    """Peak bytes of one call of ``case`` (``side`` 'nbconv' or 'torch'), in a fresh process."""
    import json
    import subprocess
    import sys

    env = dict(os.environ, **_MALLOC_ENV)
    out = subprocess.run([sys.executable, "-c", _CHILD, side, workload, case, direction],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"peak-memory run of {case} ({side}) failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
