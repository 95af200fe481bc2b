"""A register-tiled multiply-add micro-kernel written as LLVM vector IR (a Numba intrinsic).

``_tile(no, nv, ld, pl, off, w, y, r0, r1, a, wo, yo, ldw)`` computes, for o < no and i < nv * VW,

    y[yo + o * ldy + i] = (y[...] if ld else 0) + sum_{r0 <= r < r1} w[wo + o * ldw + r] * pl[off[r] + a + i]

(``y`` 2-D C-contiguous with rows of ``ldy``; ``pl``, ``off``, ``w`` 1-D contiguous), holding the
no x nv vector accumulators in registers for the whole sum: per row r, nv vector loads of the input
and no broadcast weights feed no * nv fused multiply-adds. VW is 64 bytes of the dtype (16 float32,
8 float64).

Why IR: Numba's loop vectoriser only vectorises innermost loops, so written in Python either the
accumulators live in memory (phase_direct's passes: an accumulator load and store per vector and
pass) or, with scalar accumulators, LLVM vectorises the reduction over r instead of the positions
(gathers; 14 GFLOP/s measured) or, without reassociation, not at all (scalar FMAs). Measured on one
core of this machine (Zen 4), rows in L1: 57-71 GFLOP/s with 4 x 3 ymm tiles, 87-104 with 4 x 3
zmm, 91-110 with 6 x 4 zmm, 75-91 with 8 x 3 zmm (spills). Zen 4 runs a zmm FMA as two halves, so
the wider vectors halve the instructions per flop, not the flops per cycle.

Nothing is bounds-checked: the caller guarantees every index above lies inside its array.
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

VECTOR_BYTES = 64
#: output-channel counts and position-vector counts a tile can have (the caller picks per block)
NOS = (6, 4, 2, 1)
MAX_NV = 4


def vector_width(itemsize):
    return VECTOR_BYTES // itemsize


def _emit(context, builder, arrays, scalars, NO, NV, vty, ldy, done):
    """One tile's loop in straight-line IR, ending in a branch to ``done``."""
    pla, offa, wa, ya = arrays
    r0v, r1v, av, wov, yov, ldwv, ldv = scalars
    i64 = ir.IntType(64)
    VW = vty.count
    vpty = vty.as_pointer()
    fname = "llvm.fma.v%d%s" % (VW, "f32" if isinstance(vty.element, ir.FloatType) else "f64")
    fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty, vty, vty]), fname)
    zero = ir.Constant(vty, [ir.Constant(vty.element, 0.0)] * VW)
    splat = ir.Constant(ir.VectorType(ir.IntType(32), VW), [0] * VW)

    def yptr(o, v):
        idx = builder.add(builder.add(yov, builder.mul(ir.Constant(i64, o), ldy)), ir.Constant(i64, v * VW))
        return builder.bitcast(builder.gep(ya.data, [idx]), vpty)

    inits = [[builder.select(ldv, builder.load(yptr(o, v), align=4), zero) for v in range(NV)]
             for o in range(NO)]
    entry = builder.basic_block
    loop = builder.append_basic_block("tile%dx%d.loop" % (NO, NV))
    exit_ = builder.append_basic_block("tile%dx%d.exit" % (NO, NV))
    builder.branch(loop)
    builder.position_at_end(loop)
    r = builder.phi(i64)
    r.add_incoming(r0v, entry)
    accs = [[builder.phi(vty) for _ in range(NV)] for _ in range(NO)]
    for o in range(NO):
        for v in range(NV):
            accs[o][v].add_incoming(inits[o][v], entry)
    base = builder.add(builder.load(builder.gep(offa.data, [r])), av)
    xs = [builder.load(builder.bitcast(builder.gep(pla.data, [builder.add(base, ir.Constant(i64, v * VW))]),
                                       vpty), align=4) for v in range(NV)]
    news = []
    for o in range(NO):
        u = builder.load(builder.gep(wa.data, [builder.add(builder.add(wov, builder.mul(ir.Constant(i64, o), ldwv)), r)]))
        us = builder.shuffle_vector(builder.insert_element(ir.Constant(vty, ir.Undefined), u, ir.Constant(ir.IntType(32), 0)),
                                    ir.Constant(vty, ir.Undefined), splat)
        news.append([builder.call(fma, [us, xs[v], accs[o][v]]) for v in range(NV)])
    rn = builder.add(r, ir.Constant(i64, 1))
    r.add_incoming(rn, loop)
    for o in range(NO):
        for v in range(NV):
            accs[o][v].add_incoming(news[o][v], loop)
    builder.cbranch(builder.icmp_signed("<", rn, r1v), loop, exit_)
    builder.position_at_end(exit_)
    for o in range(NO):
        for v in range(NV):
            builder.store(news[o][v], yptr(o, v), align=4)
    builder.branch(done)


@intrinsic
def _tile(typingctx, no, nv, ld, pl, off, w, y, r0, r1, a, wo, yo, ldw):
    if not (isinstance(pl, types.Array) and pl.dtype in (types.float32, types.float64)
            and w.dtype == pl.dtype and y.dtype == pl.dtype and y.ndim == 2):
        return None
    sig = types.void(no, nv, ld, pl, off, w, y, r0, r1, a, wo, yo, ldw)

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        tys = signature.args
        nov, nvv, ldv = args[0], args[1], args[2]
        arrays = [context.make_array(tys[k])(context, builder, args[k]) for k in (3, 4, 5, 6)]
        scal = [context.cast(builder, args[k], tys[k], types.int64) for k in (7, 8, 9, 10, 11, 12)]
        scalars = scal + [context.cast(builder, ldv, tys[2], types.boolean)]
        ldy = cgutils.unpack_tuple(builder, arrays[3].shape, 2)[1]
        VW = vector_width(context.get_abi_sizeof(context.get_value_type(tys[3].dtype)))
        vty = ir.VectorType(context.get_value_type(tys[3].dtype), VW)
        key = builder.add(builder.mul(context.cast(builder, nov, tys[0], types.int64), ir.Constant(i64, 8)),
                          context.cast(builder, nvv, tys[1], types.int64))
        done = builder.append_basic_block("tile.done")
        default = builder.append_basic_block("tile.none")
        switch = builder.switch(key, default)
        for NO in NOS:
            for NV in range(1, MAX_NV + 1):
                case = builder.append_basic_block("tile%dx%d" % (NO, NV))
                switch.add_case(ir.Constant(i64, NO * 8 + NV), case)
                builder.position_at_end(case)
                _emit(context, builder, arrays, scalars, NO, NV, vty, ldy, done)
        builder.position_at_end(default)  # no such tile: the caller only asks for NOS x 1..MAX_NV
        builder.branch(done)
        builder.position_at_end(done)
        return context.get_dummy_value()

    return sig, codegen
