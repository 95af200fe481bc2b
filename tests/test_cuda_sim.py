"""The CUDA backend, tested without a GPU, in two subprocesses started side by side:

* ``tests/cuda`` under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1`` must be set before numba
  is imported, which this process has done long ago);
* ``tests/cuda/check_compile.py``: every kernel through Numba's real CUDA compiler (typing and
  lowering; no GPU needed), float32 kernels checked for float64 arithmetic, then to PTX by libNVVM
  (the ``nvidia-nvvm`` wheel of the test extra; skipped only where no libNVVM is installed).
"""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 900


def _start(args, simulator):
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    if simulator:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def runs():
    procs = {
        "simulator": _start(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/cuda"], True),
        "compile": _start([os.path.join("tests", "cuda", "check_compile.py")], False),
    }
    yield procs
    for p in procs.values():
        if p.poll() is None:
            p.kill()
            p.wait()


def _finish(proc):
    if hasattr(proc, "result"):  # several tests read one run
        return proc.result
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"timed out after {TIMEOUT}s:\n{out[-4000:]}")
    proc.result = proc.returncode, out
    return proc.result


def test_cuda_suite_in_the_simulator(runs):
    rc, out = _finish(runs["simulator"])
    assert rc == 0, out[-6000:]
    assert " passed" in out and " failed" not in out, out[-3000:]


def test_gpu_bench_fails_gracefully_without_a_gpu():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    proc = subprocess.run([sys.executable, "-m", "nbconv.cuda.bench"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no GPU to benchmark on" in proc.stderr and "Traceback" not in proc.stderr


def test_cuda_kernels_compile_for_a_real_gpu(runs):
    rc, out = _finish(runs["compile"])
    assert rc == 0, out[-6000:]
    assert "0 promote float32 to float64; 0 kernels not covered" in out, out[-3000:]


def test_cuda_kernels_compile_to_ptx(runs):
    """libNVVM accepts every kernel specialisation (a real GPU would reject what it rejects)."""
    rc, out = _finish(runs["compile"])
    line = next((x for x in out.splitlines() if x.startswith("ptx:")), None)
    assert line is not None, out[-3000:]
    if line.startswith("ptx: skipped (no libNVVM"):
        pytest.skip(line)
    assert rc == 0 and line.endswith(", 0 failed"), out[-6000:]
