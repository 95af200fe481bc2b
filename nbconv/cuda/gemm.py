"""A tiled shared-memory GEMM with register blocking, for every GEMM-shaped CUDA algorithm.

``C[z](M x N) = A[z](M x K) @ B[z](K x N)`` for a batch of Z problems. The operands are flat 1-D
device arrays; *index functions* (CUDA device functions) say where element (m, k) of A, (k, n) of
B and (m, n) of C live, or return -1 for an element of A or B that is zero (padding). So one kernel
serves strided matrices (im2col's GEMMs, :func:`strided`) as well as GEMMs that gather their
operands straight from the convolution's arrays (implicit GEMM, unshared GEMM):

    a_index(geo, z, m, k) -> int      b_index(geo, z, k, n) -> int      c_index(geo, z, s, m, n) -> int

``geo`` is a tuple of int64 the caller packs (shapes, strides, the convolution's geometry).

Each block computes a BM x BN tile of C: per BK-deep step the block's threads load a BM x BK tile
of A and a BK x BN tile of B into shared memory (zero outside the matrices), synchronise, and each
thread accumulates a TM x TN micro-tile in registers from rows ``ty + i * BM/TM`` and columns
``tx + j * BN/TN`` (strided, so a warp reads consecutive shared-memory words and writes consecutive
columns of C). The element each thread loads is chosen so that consecutive threads read
consecutive addresses of the operand's contiguous axis (``a_kfast``, ``b_nfast``).

Split-K: with S > 1 the K range is cut into S slices of Kc, block z-index ``z * S + s`` computes
slice s and ``c_index`` puts it into partial s; :func:`nbconv.cuda.launch.sum_splits` then adds the
partials in a fixed order, so results are deterministic (no atomics anywhere).

Not yet tuned on a GPU (none was available when this was written; ``python -m nbconv.cuda.bench``
measures it against cuDNN). Known costs to look at first: the index functions do 64-bit integer
divisions per loaded element (the gathers of implicit GEMM up to ~10), although a thread's column
of B is the same for every k-tile and could be decomposed once per block; no double buffering of
the shared tiles; one tile shape per GEMM (64 x 64, or 16 x 128 for GEMMs of <= 16 rows).
"""
from __future__ import annotations

import functools

import numpy as np
from numba import cuda

from . import launch
from .launch import ceil_div, nb_type


@functools.cache
def tiled_kernel(a_index, b_index, c_index, dtype, tile, a_kfast=True, b_nfast=True, accumulate=False):
    """The tiled GEMM kernel for these index functions, dtype and (BM, BN, BK, TM, TN) tile.

    Launch: grid (ceil(N/BN), min(ceil(M/BM), cap), min(Z*S, cap)), block (BM/TM)*(BN/TN);
    arguments (A, B, C, geo, M, N, K, Z, S, Kc).
    """
    BM, BN, BK, TM, TN = tile
    RM, RN = BM // TM, BN // TN
    NT = RM * RN
    SA, SB = BM * BK, BK * BN
    LA, LB = ceil_div(SA, NT), ceil_div(SB, NT)  # tile elements each thread loads (at most)
    T = nb_type(dtype)
    ZERO = launch.zero(dtype)

    @cuda.jit
    def _gemm_kernel(A, B, C, geo, M, N, K, Z, S, Kc):
        As = cuda.shared.array((BK, BM), T)
        Bs = cuda.shared.array((BK, BN), T)
        acc = cuda.local.array((TM, TN), T)
        ar = cuda.local.array(TM, T)
        br = cuda.local.array(TN, T)
        t = cuda.threadIdx.x
        tx = t % RN
        ty = t // RN
        n0 = cuda.blockIdx.x * BN
        m_tiles = (M + BM - 1) // BM
        # block-uniform loops: every thread of a block reaches every syncthreads
        for zs in range(cuda.blockIdx.z, Z * S, cuda.gridDim.z):
            z = zs // S
            s = zs - z * S
            k_begin = s * Kc
            k_end = k_begin + Kc
            if k_end > K:  # noqa: PLR1730  (Numba's CUDA target fails to type min() of two ints)
                k_end = K
            for mt in range(cuda.blockIdx.y, m_tiles, cuda.gridDim.y):
                m0 = mt * BM
                for i in range(TM):
                    for j in range(TN):
                        acc[i, j] = ZERO
                for k0 in range(k_begin, k_end, BK):
                    for el in range(LA):
                        e = t + el * NT
                        if e >= SA:
                            break
                        if a_kfast:
                            kk = e % BK
                            mm = e // BK
                        else:
                            mm = e % BM
                            kk = e // BM
                        v = ZERO
                        if m0 + mm < M and k0 + kk < k_end:
                            ix = a_index(geo, z, m0 + mm, k0 + kk)
                            if ix >= 0:
                                v = A[ix]
                        As[kk, mm] = v
                    for el in range(LB):
                        e = t + el * NT
                        if e >= SB:
                            break
                        if b_nfast:
                            nn = e % BN
                            kk = e // BN
                        else:
                            kk = e % BK
                            nn = e // BK
                        v = ZERO
                        if n0 + nn < N and k0 + kk < k_end:
                            ix = b_index(geo, z, k0 + kk, n0 + nn)
                            if ix >= 0:
                                v = B[ix]
                        Bs[kk, nn] = v
                    cuda.syncthreads()
                    for kk in range(BK):
                        for i in range(TM):
                            ar[i] = As[kk, ty + i * RM]
                        for j in range(TN):
                            br[j] = Bs[kk, tx + j * RN]
                        for i in range(TM):
                            for j in range(TN):
                                acc[i, j] += ar[i] * br[j]
                    cuda.syncthreads()
                for i in range(TM):
                    m = m0 + ty + i * RM
                    if m < M:
                        for j in range(TN):
                            n = n0 + tx + j * RN
                            if n < N:
                                ix = c_index(geo, z, s, m, n)
                                if accumulate:
                                    C[ix] += acc[i, j]
                                else:
                                    C[ix] = acc[i, j]

    return _gemm_kernel


def launch_tiled(kernel_args, A, B, C, geo, M, N, K, Z, S=1, Kc=None, *, dtype, a_kfast=True,
                 b_nfast=True, accumulate=False):
    """Launch :func:`tiled_kernel` for index functions ``kernel_args = (a_index, b_index,
    c_index)`` over flat device arrays A, B, C."""
    if M <= 0 or N <= 0 or Z <= 0:
        return
    tile = launch.gemm_tile(dtype, M)
    BM, BN, _, TM, TN = tile
    kern = tiled_kernel(*kernel_args, np.dtype(dtype).name, tile, a_kfast, b_nfast, accumulate)
    cap = launch.config().max_grid_yz
    grid = (ceil_div(N, BN), min(ceil_div(M, BM), cap), min(Z * S, cap))
    kern[grid, (BM // TM) * (BN // TN)](A, B, C, geo, M, N, K, Z, S, K if Kc is None else Kc)


def split_k(M, N, K, Z, dtype):
    """(S, Kc): how many K slices a GEMM of Z (M x K) @ (K x N) products gets, and their depth
    (a multiple of BK): enough blocks to fill the GPU, at least ``min_split_work`` k-tiles each."""
    BM, BN, BK = launch.gemm_tile(dtype, M)[:3]
    tiles = ceil_div(M, BM) * ceil_div(N, BN) * Z
    parts, per = launch.split_count(ceil_div(K, BK), tiles, launch.config().min_split_work)
    return parts, per * BK


# --------------------------------------------------------------------------------------------
# Strided batched GEMM: element (z1, z2, m, k) of A at off + z1*s1 + z2*s2 + m*sm + k1*sk1 + k2*sk2
# with z = z1 * Z2 + z2 and k = k1 * KL + k2 (a two-level k: e.g. images x positions).
# --------------------------------------------------------------------------------------------

# geo: Z2; A (off, z1, z2, m, k1, k2, KL); B (off, z1, z2, k1, k2, n, KL); C (off, z1, z2, m, n, split)


@cuda.jit(device=True)
def _strided_a(g, z, m, k):
    z1 = z // g[0]
    z2 = z - z1 * g[0]
    k1 = k // g[7]
    k2 = k - k1 * g[7]
    return g[1] + z1 * g[2] + z2 * g[3] + m * g[4] + k1 * g[5] + k2 * g[6]


@cuda.jit(device=True)
def _strided_b(g, z, k, n):
    z1 = z // g[0]
    z2 = z - z1 * g[0]
    k1 = k // g[14]
    k2 = k - k1 * g[14]
    return g[8] + z1 * g[9] + z2 * g[10] + k1 * g[11] + k2 * g[12] + n * g[13]


@cuda.jit(device=True)
def _strided_c(g, z, s, m, n):
    z1 = z // g[0]
    z2 = z - z1 * g[0]
    return g[15] + z1 * g[16] + z2 * g[17] + m * g[18] + n * g[19] + s * g[20]


_STRIDED = (_strided_a, _strided_b, _strided_c)


class Operand:
    """Layout of one strided operand: offset, batch strides (z1, z2), row and column strides.

    Its k index (A's column, B's row) may be two-level, ``k = k1 * kl + k2`` (e.g. images x
    positions): the k stride given (``col`` of A, ``row`` of B) is then k1's and ``k2`` is k2's.
    """

    def __init__(self, off=0, z1=0, z2=0, row=0, col=0, k2=None, kl=None):
        self.off, self.z1, self.z2, self.row, self.col, self.k2, self.kl = off, z1, z2, row, col, k2, kl


def strided(A, B, C, M, N, K, Z1, Z2, a, b, c, *, dtype, accumulate=False, split=None,
            split_stride=0):
    """C[z] (=|+=) A[z] @ B[z] for z = z1 * Z2 + z2 on flat device arrays, layouts given by
    :class:`Operand` ``a`` (m, k), ``b`` (k, n) and ``c`` (m, n). ``split=(S, Kc)`` computes S
    partial products over K slices of Kc into C + s * split_stride."""
    S, Kc = split or (1, K)
    big = 1 << 62  # single-level k: k1 = k // big = 0, k2 = k
    ga = (a.off, a.z1, a.z2, a.row, a.col, a.col if a.kl is None else a.k2, a.kl or big)
    gb = (b.off, b.z1, b.z2, b.row, b.row if b.kl is None else b.k2, b.col, b.kl or big)
    gc = (c.off, c.z1, c.z2, c.row, c.col, split_stride)
    geo = tuple(int(v) for v in (Z2,) + ga + gb + gc)
    # the contiguous axis first when loading the tiles: coalesced global reads
    a_inner = a.col if a.kl is None else a.k2
    b_inner = b.row if b.kl is None else b.k2
    a_kfast = not (a.row == 1 and a_inner != 1)
    b_nfast = not (b_inner == 1 and b.col != 1)
    launch_tiled(_STRIDED, A, B, C, geo, M, N, K, Z1 * Z2, S, Kc, dtype=dtype, a_kfast=a_kfast,
                 b_nfast=b_nfast, accumulate=accumulate)
