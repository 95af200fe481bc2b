"""Shared helpers of the test-suite: random problems, array layouts, tolerances, sweep runner."""
from __future__ import annotations

import numpy as np

import nbconv
import reference as R

DTYPES = (np.float32, np.float64)
LAYOUTS = ("C", "F", "strided", "reversed")
BORDER_FORMS = ("valid", "full", "half", "int", "ints", "pairs", "mixed")
#: random 'same' problems (unit strides, each axis padded by its dilated kernel's extent less one,
#: split at random) that the sweeps add after their own: the algorithms limited to layers that
#: keep their size (direct_tiled) meet few among the others
SAME_EXTRA = 24


def form_at(idx, n):
    """The border form of a sweep's case ``idx`` of ``n`` + SAME_EXTRA: the sweep's own draw
    (None) for the first n, 'same' after them."""
    return "same" if idx >= n else None


def cpu_algorithm_names():
    return [a.name for a in nbconv.registry.algorithms(device="cpu")]


def algo_params():
    """Every registered CPU algorithm, plus None (the library's own choice)."""
    return cpu_algorithm_names() + [None]


def for_direction(algo, direction):
    """``algo`` where it implements ``direction``, else 'direct': sweeps that run all three
    directions per case still check an algorithm's other directions (phase_tiled has no
    grad-weights)."""
    if algo is None or direction in nbconv.registry.get(algo).directions:
        return algo
    return "direct"


def shared_spec(case, direction="forward"):
    """The canonical spec of a shared (not unshared) random case."""
    from nbconv.spec import build

    return build(direction, case.nd, case.x_shape, case.w_shape, border_mode=case.border_mode,
                 subsample=case.subsample, filter_dilation=case.dilation, num_groups=case.groups,
                 unshared=False, filter_flip=case.flip, dtype=case.dtype, names={"x": "x", "w": "w"})


def plans_within_limit(module, rng, directions, set_limit, max_limit, n=150):
    """For ``n`` random shared problems and workspace limits: whenever ``module`` applies, its
    planned workspace (``module._plan``: what it allocates) fits the limit with 1 to batch images
    per chunk. Returns (cases it applied to, cases it refused)."""
    from nbconv.cpu import im2col

    fitted = refused = 0
    for idx in range(n):
        case = random_case(rng, int(rng.integers(1, 4)), idx, unshared=False,
                           batch=int(rng.integers(1, 9)))
        spec = shared_spec(case, directions[idx % len(directions)])
        set_limit(int(rng.integers(64, max_limit)))
        if not module.supports(spec):
            refused += 1
            continue
        nb, ws = module._plan(spec)
        assert 1 <= nb <= spec.batch and ws <= im2col.get_workspace_limit(), (case, nb, ws)
        fitted += 1
    return fitted, refused


def algo_id(a):
    return "auto" if a is None else str(a)


# ---------------------------------------------------------------------------------------------
# arrays
# ---------------------------------------------------------------------------------------------


def with_layout(a, layout):
    """The same values as ``a`` in a given memory layout (C, Fortran, strided, negative strides)."""
    a = np.asarray(a)
    if layout == "C":
        return np.ascontiguousarray(a)
    if layout == "F":
        return np.asfortranarray(a)
    if layout == "strided":
        if a.ndim == 0:
            return a
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1] + 1,), dtype=a.dtype)
        view = big[..., 1::2]
        view[...] = a
        return view
    if layout == "reversed":
        if a.ndim == 0:
            return a
        rev = np.ascontiguousarray(a[..., ::-1, :] if a.ndim >= 2 else a[::-1])
        return rev[..., ::-1, :] if a.ndim >= 2 else rev[::-1]
    raise ValueError(layout)


def rand(rng, shape, dtype=np.float64, layout="C"):
    a = rng.standard_normal(shape).astype(dtype)
    out = with_layout(a, layout)
    assert np.array_equal(out, a)
    return out


# ---------------------------------------------------------------------------------------------
# tolerances
# ---------------------------------------------------------------------------------------------


def tolerances(dtype, scale):
    """(rtol, atol) for comparing against the float64 reference.

    ``scale`` bounds the magnitude of the terms summed (the same map applied to |operands|).
    """
    scale = max(1.0, float(scale))
    if np.dtype(dtype) == np.float32:
        return 1e-4, 1e-5 * scale
    return 1e-10, 1e-10 * scale


def compare(out, ref, dtype, scale, shape=None):
    """None if ``out`` matches ``ref`` (dtype, shape, values), else a short error message."""
    if not isinstance(out, np.ndarray):
        return f"result is {type(out).__name__}, not an ndarray"
    if out.dtype != np.dtype(dtype):
        return f"dtype {out.dtype} != {np.dtype(dtype)}"
    shape = ref.shape if shape is None else tuple(shape)
    if out.shape != shape:
        return f"shape {out.shape} != {shape}"
    rtol, atol = tolerances(dtype, scale)
    if out.size == 0:
        return None
    bad = ~np.isclose(out, ref, rtol=rtol, atol=atol)
    if bad.any():
        err = np.abs(out.astype(np.float64) - ref)
        idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(err)), err.shape))
        return (
            f"{int(bad.sum())}/{out.size} elements differ; max abs err {err.max():.3g} at {idx} "
            f"(got {float(out[idx])!r}, want {float(ref[idx])!r}, atol {atol:.2g})"
        )
    return None


def assert_matches(out, ref, dtype, scale, shape=None):
    msg = compare(out, ref, dtype, scale, shape)
    assert msg is None, msg


# ---------------------------------------------------------------------------------------------
# random problems
# ---------------------------------------------------------------------------------------------


def random_border(rng, nd, form):
    if form in ("valid", "full", "half"):
        return form
    r = lambda: int(rng.integers(0, 4))  # noqa: E731
    if form == "int":
        return r()
    if form == "ints":
        return tuple(r() for _ in range(nd))
    if form == "pairs":
        return tuple((r(), r()) for _ in range(nd))
    if form == "mixed":
        out = [r() if rng.random() < 0.5 else (r(), r()) for _ in range(nd)]
        if nd >= 2:  # at least one symmetric int and one (lo, hi) pair
            out[0] = r()
            out[1] = (r(), r())
            rng.shuffle(out)
        return tuple(out)
    raise ValueError(form)


class Case:
    """One random convolution problem (forward shapes; every direction derives from it)."""

    def __init__(self, **kw):
        self.__dict__.update(kw)

    def kwargs(self):
        """The keyword arguments every conv function shares (besides shapes and algo)."""
        return dict(
            border_mode=self.border_mode,
            filter_flip=self.flip,
            filter_dilation=self.dilation,
            num_groups=self.groups,
            unshared=self.unshared,
        )

    def ref_kwargs(self):
        return dict(
            border_mode=self.border_mode,
            subsample=self.subsample,
            filter_flip=self.flip,
            filter_dilation=self.dilation,
            num_groups=self.groups,
            unshared=self.unshared,
        )

    def __repr__(self):
        keys = ("x_shape", "w_shape", "y_shape", "border_mode", "subsample", "dilation", "groups",
                "flip", "unshared", "dtype", "x_layout", "w_layout")
        return "Case(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in keys) + ")"


def random_case(rng, nd, index=0, *, unshared=None, groups=None, max_spatial=None, kmax=None,
                batch=None, dtype=None, form=None, max_stride=3, max_dilation=3, cg=None, og=None):
    """A random valid problem with nd spatial axes.

    ``index`` cycles the categorical parameters so a sweep of a few dozen cases covers every
    border_mode form, dtype and flip, whatever the random draws. ``form='same'``: unit strides
    and (lo, hi) pads adding up to each axis's dilated kernel extent less one.
    """
    max_spatial = max_spatial or (9 if nd <= 2 else 6)
    kmax = kmax or (4 if nd <= 2 else 3)
    form = form or BORDER_FORMS[index % len(BORDER_FORMS)]
    dtype = dtype or DTYPES[(index // len(BORDER_FORMS)) % 2]
    flip = (index // (2 * len(BORDER_FORMS))) % 2 == 0
    for _ in range(10000):
        G = groups if groups is not None else int(rng.choice([1, 1, 2, 3, 4]))
        Cg = cg or int(rng.integers(1, max(1, min(3, 8 // G)) + 1))
        Og = og or int(rng.integers(1, max(1, min(3, 8 // G)) + 1))
        N = batch if batch is not None else int(rng.choice([0, 1, 1, 2, 2, 3]))
        # 1x1 kernels are over-represented so algorithms specialised for them (e.g. gemm_1x1)
        # meet some in every sweep
        if rng.random() < 0.2:
            k = (1,) * nd
        else:
            k = tuple(int(rng.integers(1, kmax + 1)) for _ in range(nd))
        d = tuple(int(rng.choice([1, 1, 2, 3][: max_dilation + 1])) for _ in range(nd))
        s = tuple(int(rng.integers(1, max_stride + 1)) for _ in range(nd))
        if form == "same":
            s = (1,) * nd
            tot = [(k[a] - 1) * d[a] for a in range(nd)]
            lo = [int(rng.integers(0, t + 1)) for t in tot]
            bm = tuple((lo[a], tot[a] - lo[a]) for a in range(nd))
        else:
            bm = random_border(rng, nd, form)
        pads = R.pads_from_border_mode(bm, k, d)
        i = []
        for a in range(nd):
            dk = (k[a] - 1) * d[a] + 1
            lo_i = max(1, dk - pads[a][0] - pads[a][1])
            if lo_i > max_spatial:
                break
            i.append(int(rng.integers(lo_i, max_spatial + 1)))
        if len(i) != nd:
            continue
        o = tuple(R.conv_output_size(i[a], k[a], *pads[a], s[a], d[a]) for a in range(nd))
        if min(o) < 1:
            continue
        un = bool(rng.random() < 0.3) if unshared is None else unshared
        C, O = Cg * G, Og * G
        w_shape = (O,) + (o if un else ()) + (Cg,) + k
        return Case(
            nd=nd, N=N, C=C, O=O, groups=G, Cg=Cg, x_shape=(N, C) + tuple(i), w_shape=w_shape,
            y_shape=(N, O) + o, kshape=k, border_mode=bm, subsample=s, dilation=d, flip=flip,
            unshared=un, dtype=np.dtype(dtype).type,
            x_layout=LAYOUTS[int(rng.integers(0, len(LAYOUTS)))],
            w_layout=LAYOUTS[int(rng.integers(0, len(LAYOUTS)))],
        )
    raise RuntimeError("could not draw a valid problem")


def hint(shape, rng, channel_axes=(0, 1)):
    """None, the exact shape, or the shape with None in some of its batch/channel entries."""
    r = rng.random()
    if r < 0.3:
        return None
    shape = list(shape)
    if r < 0.65:
        return tuple(shape)
    for a in channel_axes:
        if rng.random() < 0.6:
            shape[a] = None
    return tuple(shape)


# ---------------------------------------------------------------------------------------------
# sweep runner
# ---------------------------------------------------------------------------------------------


class Sweep:
    """Runs cases, counting AlgorithmNotApplicable, collecting (not raising) mismatches."""

    def __init__(self, algo, direction=None):
        self.algo = algo
        # an algorithm that does not implement the sweep's direction must refuse every case
        self.implements = direction is None or for_direction(algo, direction) == algo
        self.applicable = 0
        self.not_applicable = 0
        self.failures = []

    def run(self, desc, thunk):
        try:
            msg = thunk()
        except nbconv.AlgorithmNotApplicable:
            self.not_applicable += 1
            return
        except Exception as exc:  # any other exception is a failure of that case
            msg = f"raised {type(exc).__name__}: {exc}"
        self.applicable += 1
        if msg:
            self.failures.append(f"{desc}: {msg}")

    def check(self, require_applicable=True):
        """``require_applicable=False`` only for sweeps whose problems the algorithm cannot take
        by construction (e.g. separable convolutions for an unshared-only algorithm)."""
        total = self.applicable + self.not_applicable
        assert total > 0
        if not self.implements:
            assert self.applicable == 0, f"algo={self.algo!r} lacks this direction but ran {self.applicable} cases"
        elif require_applicable:
            assert self.applicable > 0, f"algo={self.algo!r} was applicable to none of {total} cases"
        if self.algo in ("direct", None):
            assert self.not_applicable == 0, (
                f"algo={self.algo!r} must handle every problem; {self.not_applicable} of {total} "
                "raised AlgorithmNotApplicable"
            )
        if self.failures:
            head = "\n".join(self.failures[:6])
            raise AssertionError(
                f"{len(self.failures)} of {self.applicable} applicable cases failed "
                f"(algo={self.algo!r}):\n{head}"
            )


def only_unshared(algo):
    """True for an algorithm that supports unshared problems and no shared ones."""
    if algo is None:
        return False
    from nbconv.spec import build

    a = nbconv.registry.get(algo)
    kw = dict(border_mode="valid", subsample=1, filter_dilation=1, num_groups=1, filter_flip=True,
              dtype="float64", names={"x": "input", "w": "filters"})
    shared = build("forward", 2, (1, 2, 5, 5), (3, 2, 3, 3), unshared=False, **kw)
    local = build("forward", 2, (1, 2, 5, 5), (3, 3, 3, 2, 3, 3), unshared=True, **kw)
    return a.applicable(local) and not a.applicable(shared)


def check_directions(case, rng, algo):
    """None, or the first direction whose result under ``algo`` differs from the reference, for
    random operands of the 2D or 3D ``case``."""
    nd = case.nd
    fwd = {2: nbconv.conv2d, 3: nbconv.conv3d}[nd]
    gin = {2: nbconv.conv2d_grad_wrt_inputs, 3: nbconv.conv3d_grad_wrt_inputs}[nd]
    gw = {2: nbconv.conv2d_grad_wrt_weights, 3: nbconv.conv3d_grad_wrt_weights}[nd]
    x = rand(rng, case.x_shape, case.dtype)
    w = rand(rng, case.w_shape, case.dtype)
    dy = rand(rng, case.y_shape, case.dtype)
    kw = dict(subsample=case.subsample, algo=algo, **case.kwargs())
    rk = case.ref_kwargs()
    checks = (
        ("forward", lambda: fwd(x, w, **kw), lambda a, b: R.conv_nd(a, b, **rk), (x, w), case.y_shape),
        ("grad_input", lambda: gin(dy, w, case.x_shape, **kw),
         lambda a, b: R.conv_nd_grad_input(a, b, case.x_shape, **rk), (dy, w), case.x_shape),
        ("grad_weights", lambda: gw(x, dy, case.w_shape, **kw),
         lambda a, b: R.conv_nd_grad_weights(a, b, case.w_shape, **rk), (x, dy), case.w_shape),
    )
    for name, run, ref, (a, b), shape in checks:
        mag = ref(np.abs(a), np.abs(b))
        msg = compare(run(), ref(a, b), case.dtype, float(mag.max()) if mag.size else 1.0, shape)
        if msg:
            return f"{name}: {msg}"
    return None
