"""Index arithmetic the CUDA kernels share (device functions, inlined by NVVM)."""
from numba import cuda


@cuda.jit(device=True)
def unravel5(t, A, B, C, D):
    """(i0, i1, i2, i3, i4): the position of flat index ``t`` in a C-ordered (any, A, B, C, D)
    array, the layout of every canonical x, y and their gradients. With A = 1 it unravels four
    axes: i0 is then the index along the leading, unbounded one (and i1 is 0)."""
    i4 = t % D
    r = t // D
    i3 = r % C
    r //= C
    i2 = r % B
    r //= B
    return r // A, r % A, i2, i3, i4


@cuda.jit(device=True)
def fed(i, k, pad, dil, stride, n_out):
    """The output coordinate, along one axis, whose tap k reads input coordinate i, or -1 when
    there is none: (i + pad - k*dil) / stride where that divides and lies in [0, n_out). This is
    how the gathering grad-input kernels find every output an input element fed."""
    t = i + pad - k * dil
    if t < 0 or t % stride != 0 or t // stride >= n_out:
        return -1
    return t // stride
