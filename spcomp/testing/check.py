"""``check_kernel``: compile, run and compare a kernel with the float64 reference.

>>> from spcomp.testing import check_kernel
>>> check_kernel("y[i] = A[i,j] * x[j]", {"A": "csr"})            # random operands
>>> check_kernel("C[i,j] = A[i,k] * B[k,j]", {"A": "csr", "B": "csr", "C": "csr"},
...              {"A": scipy_matrix, "B": spcomp_tensor})          # missing ones are drawn

The reference is :func:`spcomp.testing.reference.reference`: the same index
notation (the kernel's own checked notation, so sums sit where the compiler put
them) evaluated densely with NumPy in float64, on the operand values *as the
kernel sees them* (rounded to each tensor's dtype first, so the input rounding
of float32 / bfloat16 is not counted as kernel error).

Tolerances (:data:`TOLERANCES`, by the least precise dtype among the kernel's
tensors) compare ``|result - expected| <= atol * M + rtol * |expected|`` element
by element, where ``M = max(1, max |expected|)`` is the magnitude of the result:
summation error grows with the size of the terms, not of each output entry, so
an absolute tolerance relative to the magnitude is the fair bound for entries
that (nearly) cancel.

========== ====== ====== ===========================================================
dtype      rtol   atol   why
========== ====== ====== ===========================================================
float64    1e-9   1e-9   generated data is exact; only exp/gelu/... round (1 ulp)
float32    1e-4   1e-4   ~2**-23 per operation, sums of up to a few hundred terms
bfloat16   2e-2   2e-2   bfloat16 storage keeps 8 significant bits (2**-8 = 0.4%),
                         accumulation is float32, the result is rounded to bfloat16
========== ====== ====== ===========================================================
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..formats import Format
from .reference import reference

__all__ = ["TOLERANCES", "VALUES", "KernelCheck", "check_kernel", "densify", "fit_packed", "random_operands",
           "random_tensor", "random_values", "tolerance"]

#: The nonzero values tensors are drawn from (exact in float64, float32 and bfloat16).
VALUES = np.array([-3.0, -2.0, -1.5, -1.0, -0.5, 0.5, 1.0, 1.5, 2.0, 3.0])


# ============================================================ data

def fit_packed(a: np.ndarray, fmt) -> np.ndarray:
    """A copy of ``a`` with just enough nonzeros zeroed that ``fmt``'s packed-block
    levels do not overflow (each (parent, block) keeps at most K coordinates; the
    ones later in the block are dropped). Formats without packed levels return an
    unchanged copy."""
    from ..runtime.convert import blocked_view
    fmt = Format.parse(fmt, a.ndim)
    a = np.array(a, copy=True)
    if a.ndim == 0 or not any(l.fixed_slots for l in fmt.levels):
        return a
    if fmt.blocks is not None:  # blocked ELL: the levels' view of the blocks
        if fmt.block_misfit(a.shape) is None:
            _fit_levels(blocked_view(a, fmt), fmt.levels)
        return a
    _fit_levels(np.transpose(a, fmt.order), fmt.levels)  # a view: zeroing it zeroes a
    return a


def _fit_levels(s: np.ndarray, levels) -> None:
    """Zero entries of ``s`` (an array in storage order, one axis a level) that the
    packed-block levels have no slot for."""
    dims = s.shape
    for l, lvl in enumerate(levels):
        if not lvl.fixed_slots:
            continue
        N = dims[l]
        if N == 0 or s.size == 0:
            continue
        B = lvl.block_size(N)
        nb = lvl.num_blocks(N)
        P = int(np.prod(dims[:l], dtype=np.int64))
        rest = int(np.prod(dims[l + 1:], dtype=np.int64))
        view = s.reshape(P, N, rest) if s.flags.c_contiguous else None
        exists = (s != 0).reshape(P, N, rest).any(axis=2)
        padded = np.zeros((P, nb * B), dtype=bool)
        padded[:, :N] = exists
        running = np.cumsum(padded.reshape(P, nb, B), axis=2).reshape(P, nb * B)[:, :N]
        drop = exists & (running > lvl.K)
        if not drop.any():
            continue
        if view is not None:
            view[drop] = 0
        else:
            idx = np.nonzero(drop)
            prefix = np.unravel_index(idx[0], dims[:l]) if l else ()
            for k in range(len(idx[0])):
                sel = tuple(int(p[k]) for p in prefix) + (int(idx[1][k]),)
                s[sel] = 0


def random_values(rng: np.random.Generator, shape, density: float, empty_rows: float = 0.0) -> np.ndarray:
    """A float64 array of ``shape``: each entry nonzero with probability ``density``,
    nonzeros drawn from :data:`VALUES`; with ``empty_rows`` that fraction of the
    slices along axis 0 are all zero."""
    shape = tuple(int(s) for s in shape)
    mask = rng.random(shape) < density
    vals = rng.choice(VALUES, size=shape)
    a = np.where(mask, vals, 0.0)
    if empty_rows and a.ndim >= 1 and a.shape[0]:
        rows = rng.random(a.shape[0]) < empty_rows
        a[rows] = 0.0
    return np.asarray(a, dtype=np.float64)


def np_dtype(dtype) -> np.dtype:
    if str(dtype) in ("bfloat16", "bf16"):
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype)


def random_tensor_from(a: np.ndarray, format, dtype="float64"):
    """``a`` trimmed to fit ``format``'s packed levels, as a :class:`spcomp.Tensor`."""
    from ..runtime import Tensor
    fmt = Format.parse(format, a.ndim)
    return Tensor.from_numpy(fit_packed(a, fmt), fmt, dtype=np_dtype(dtype))


def random_tensor(rng: np.random.Generator, shape, format, density: float = 0.5, dtype="float64",
                  empty_rows: float = 0.0):
    """``(dense, tensor)``: random data (see :func:`random_values`) that fits ``format``
    (packed levels trimmed by :func:`fit_packed`), as a float64 ndarray and as a
    :class:`spcomp.Tensor` of ``format`` and ``dtype`` holding the same values."""
    a = fit_packed(random_values(rng, shape, density, empty_rows), format)
    return a, random_tensor_from(a, format, dtype)


#: (rtol, atol) per dtype; atol is scaled by the magnitude of the expected result.
TOLERANCES = {"float64": (1e-9, 1e-9), "float32": (1e-4, 1e-4), "bfloat16": (2e-2, 2e-2)}
_PRECISION = ("bfloat16", "float32", "float64")  # least precise first


def tolerance(dtypes) -> tuple:
    """``(rtol, atol)`` for a kernel whose tensors have ``dtypes`` (names or an
    iterable of names): those of the least precise one."""
    if isinstance(dtypes, str):
        dtypes = [dtypes]
    names = {str(d) for d in dtypes} or {"float64"}
    for d in _PRECISION:
        if d in names:
            return TOLERANCES[d]
    return TOLERANCES["float64"]


def densify(x) -> np.ndarray:
    """Any operand or result as a float64 ndarray: a :class:`spcomp.Tensor`, a
    ``scipy.sparse`` matrix/array, an ndarray (bfloat16 included) or a number."""
    from ..runtime import Tensor
    if isinstance(x, Tensor):
        return np.asarray(x.to_numpy()).astype(np.float64)
    try:
        import scipy.sparse as sp
        if sp.issparse(x):
            return np.asarray(x.toarray()).astype(np.float64)
    except ImportError:  # pragma: no cover - scipy is a dependency
        pass
    return np.asarray(x).astype(np.float64)


def _kind(x) -> str:
    from ..runtime import Tensor
    if isinstance(x, Tensor):
        return f"Tensor({x.format.spec()}, {x.dtype.name}, nnz={x.nnz})"
    if hasattr(x, "tocoo"):
        return f"scipy.{type(x).__name__}({x.dtype}, nnz={x.nnz})"
    if isinstance(x, np.ndarray):
        return f"ndarray({x.dtype})"
    return type(x).__name__


@dataclass
class KernelCheck:
    """What :func:`check_kernel` ran and saw."""
    kernel: object          # the spcomp.Kernel
    operands: dict          # name -> the value passed (generated or given)
    result: object          # what the kernel returned
    expected: np.ndarray    # the float64 reference, in output dimension order
    max_error: float        # max |densify(result) - expected| (0 for empty results)


def _index_sizes(notation, operands: dict) -> dict:
    from ..notation import accesses
    sizes = {}
    for acc in accesses(notation.rhs) + [notation.lhs]:
        v = operands.get(acc.tensor.name)
        if v is None:
            continue
        shape = np.shape(v) if not hasattr(v, "shape") else tuple(v.shape)
        for d, i in enumerate(acc.indices):
            if d < len(shape):
                sizes.setdefault(i.name, int(shape[d]))
    return sizes


def index_classes(notation) -> dict:
    """Index name -> a representative name: indices that must have the same size
    because one tensor is accessed with both at the same dimension (``A[i,j] *
    A[j,k]`` ties i, j and k together) share a representative."""
    from ..notation import accesses
    parent: dict = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    first: dict = {}
    for acc in [notation.lhs] + accesses(notation.rhs):
        for i in acc.indices:
            find(i.name)
        if acc.tensor.name in first:
            for a, b in zip(first[acc.tensor.name].indices, acc.indices):
                ra, rb = find(a.name), find(b.name)
                if ra != rb:
                    parent[rb] = ra
        else:
            first[acc.tensor.name] = acc
    return {x: find(x) for x in list(parent)}


def _ell_cap(notation) -> dict:
    """Index name -> the largest size the output's levels allow (``Level.output_size_cap``:
    an ELL ``p(K)`` level's K; K blocks of a blocked ELL's block columns)."""
    fmt = notation.lhs.tensor.format
    out: dict = {}
    for level, (d, part) in zip(fmt.levels, fmt.level_map()):
        cap = level.output_size_cap()
        if cap is not None and part != "inner":
            name = notation.lhs.indices[d].name
            cap *= fmt.blocks[d] if part == "outer" else 1
            out[name] = min(out.get(name, cap), cap)
    return out


def complete_sizes(notation, sizes: dict, draw_size, cap_given: bool = False) -> dict:
    """``sizes`` (index name -> size) completed for every index of ``notation``,
    with tied indices (:func:`index_classes`) equal and ELL output rows capped to
    K (given sizes too when ``cap_given``). ``draw_size()`` gives a size for a
    class no given index fixes."""
    from ..notation import accesses
    classes = index_classes(notation)
    by_class: dict = {}
    for name, size in sizes.items():
        if name in classes:
            by_class.setdefault(classes[name], int(size))
    fixed = set(by_class)
    for name, k in _ell_cap(notation).items():
        c = classes[name]
        if c not in fixed:
            by_class[c] = min(int(draw_size()), k)
        elif cap_given:
            by_class[c] = min(by_class[c], k)
    out = {}
    for acc in [notation.lhs] + accesses(notation.rhs):
        for i in acc.indices:
            c = classes[i.name]
            if c not in by_class:
                by_class[c] = int(draw_size())
            out[i.name] = by_class[c]
    # an index a blocked format cuts: a multiple of its block (the largest block asked)
    block = {}
    for acc in [notation.lhs] + accesses(notation.rhs):
        for i, b in zip(acc.indices, acc.tensor.format.blocks or ()):
            block[classes[i.name]] = max(block.get(classes[i.name], 1), b)
    for name, c in classes.items():
        if name in out and block.get(c, 1) > 1:
            b = block[c]
            out[name] = max(b, out[name] - out[name] % b)
    return out


def random_operands(kernel, sizes: dict | None = None, density: float = 0.5, seed: int = 0,
                    given: dict | None = None) -> dict:
    """Operands for ``kernel`` (name -> value), keeping those in ``given``.

    Index sizes come from ``sizes``, then from the ``given`` operands, then are
    drawn in 3..8 (indices one tensor ties together get one size; an ELL output
    row is capped to its K). Inputs are :class:`spcomp.Tensor` in their format
    (ndarrays when dense, floats when scalars) with values from :data:`VALUES` at
    ``density``, trimmed to fit packed levels; for ``+=`` the old output is drawn
    too (an ndarray, 0-d for a scalar output, or a Tensor in the output's format).
    """
    notation = kernel.notation
    rng = np.random.default_rng(seed)
    given = dict(given or {})
    sz = dict(sizes or {})
    for k, v in _index_sizes(notation, given).items():
        sz.setdefault(k, v)
    sz = complete_sizes(notation, sz, lambda: rng.integers(3, 9))
    return make_operands(notation, sz, rng, density, given)


def make_operands(notation, sizes: dict, rng, density=0.5, given: dict | None = None,
                  empty_rows: float = 0.0, extra_fits: dict | None = None) -> dict:
    """Random operands of ``notation`` for index ``sizes`` (see :func:`random_operands`).

    ``density`` is a number or a dict name -> number; ``extra_fits`` maps tensor
    names to more formats whose packed levels the data must fit as well (e.g. the
    format the compiler transposes an operand to)."""
    from ..notation import accesses
    given = given or {}
    out = {}
    seen = set()
    accs = accesses(notation.rhs) + ([notation.lhs] if notation.accumulate else [])
    for acc in accs:
        t = acc.tensor
        if t.name in seen:
            continue
        seen.add(t.name)
        if t.name in given:
            out[t.name] = given[t.name]
            continue
        shape = tuple(sizes[i.name] for i in acc.indices)
        dt = np_dtype(t.dtype)
        d = density.get(t.name, 0.5) if isinstance(density, dict) else density
        is_out = t is notation.lhs.tensor
        if t.order == 0:
            v = float(random_values(rng, (), 1.0 if d > 0 else 0.0))  # scalars are zero only at density 0
            out[t.name] = np.asarray(v, dtype=dt) if (is_out or dt != np.float64) else v
        elif t.format.is_dense:
            out[t.name] = random_values(rng, shape, d, empty_rows).astype(dt)
        else:
            a = random_values(rng, shape, d, empty_rows)
            for f in (extra_fits or {}).get(t.name, ()):
                a = fit_packed(a, f)
            out[t.name] = random_tensor_from(a, t.format, t.dtype)
    return out


def stored_masks(ops: dict, out_name: str) -> dict:
    """Where each sparse Tensor operand stores an entry (its coordinates, in
    dimension order), for the reference's division and product of stored values."""
    from ..runtime import Tensor
    masks = {}
    for name, value in ops.items():
        if name == out_name or not isinstance(value, Tensor) or value.format.is_dense:
            continue
        coords, _ = value.to_coo()
        mask = np.zeros(value.shape, dtype=bool)
        mask[tuple(coords)] = True
        masks[name] = mask
    return masks


def check_kernel(expr: str, formats: dict | None = None, operands: dict | None = None, dtype="float64",
                 rtol: float | None = None, atol: float | None = None, *, sizes: dict | None = None,
                 density: float = 0.5, seed: int = 0, **compile_kwargs) -> KernelCheck:
    """Compile ``expr``, run it and assert the result matches the float64 reference.

    ``formats``, ``dtype`` and ``compile_kwargs`` (``schedule``, ``dtypes``,
    ``drop_zeros``, ``backend`` ...) go to :func:`spcomp.compile`. ``operands`` maps
    names to values (ndarray, ``scipy.sparse``, :class:`spcomp.Tensor`, float); the
    ones missing are drawn by :func:`random_operands` with ``sizes``, ``density``
    and ``seed``. For ``+=`` the old output may be given under the output's name
    (it is updated in place when it is an ndarray).

    Asserts, with a message naming the expression, formats, dtype, index sizes
    and operands, the largest error and where it is:

    * the result's type: a float for an order-0 output (the 0-d array passed, for
      ``+=``), an ndarray of the output's
      shape and dtype for a dense output (the very array passed for ``+=``), a
      :class:`spcomp.Tensor` in the output's format, shape and dtype for a sparse one;
    * ``|result - expected| <= atol * max(1, max|expected|) + rtol * |expected|``
      everywhere (see the module docstring for the default tolerances).

    Errors from compiling or running (e.g. :class:`~spcomp.errors.UnsupportedError`)
    propagate unchanged. Returns a :class:`KernelCheck`.
    """
    import spcomp
    from ..runtime import Tensor

    kernel = spcomp.compile(expr, formats=formats, dtype=dtype, **compile_kwargs)
    notation = kernel.notation
    ops = random_operands(kernel, sizes=sizes, density=density, seed=seed, given=operands)
    out_name = kernel.output_name
    dense_in = {}
    for name, value in ops.items():
        if name == out_name:
            continue
        t = notation.tensors[name]
        dense_in[name] = densify(value).astype(np_dtype(t.dtype)).astype(np.float64)
    old = densify(ops[out_name]) if out_name in ops else None
    given_out = ops.get(out_name)
    sizes_seen = _index_sizes(notation, ops)
    expected = reference(notation, dense_in, out=old, masks=stored_masks(ops, out_name))

    result = kernel(**ops)

    out_t = notation.lhs.tensor
    fmt = out_t.format
    out_dtype = np_dtype(out_t.dtype)

    def context() -> str:
        fmts = {n: t.format.spec() or "scalar" for n, t in notation.tensors.items()}
        dts = {n: t.dtype for n, t in notation.tensors.items()}
        kinds = {n: _kind(v) for n, v in ops.items()}
        return (f"\n  expression: {expr}\n  formats:    {fmts}\n  dtypes:     {dts}"
                f"\n  sizes:      {sizes_seen}\n  operands:   {kinds}"
                f"\n  expected shape {expected.shape}\n  loops:\n    "
                + kernel.loops.replace("\n", "\n    "))

    # --- the result's type
    if out_t.order == 0 and isinstance(given_out, np.ndarray):
        assert result is given_out, "a scalar output passed for += should be updated in place and returned" \
            + context()
    elif out_t.order == 0:
        assert isinstance(result, float), f"an order-0 output should be a float, got {type(result).__name__}" \
            + context()
    elif fmt.is_dense:
        assert isinstance(result, np.ndarray), \
            f"a dense output should be an ndarray, got {type(result).__name__}" + context()
        assert result.dtype == out_dtype, f"result dtype {result.dtype}, expected {out_dtype}" + context()
        if isinstance(given_out, np.ndarray):
            assert result is given_out, "a dense output passed for += should be updated in place and returned" \
                + context()
    else:
        assert isinstance(result, Tensor), \
            f"a sparse output should be a spcomp.Tensor, got {type(result).__name__}" + context()
        assert result.format == fmt, f"result format {result.format.spec()!r}, expected {fmt.spec()!r}" \
            + context()
        assert result.dtype == out_dtype, f"result dtype {result.dtype}, expected {out_dtype}" + context()
        result.validate(out_name)
    got = densify(result)
    assert got.shape == expected.shape, f"result shape {got.shape}, expected {expected.shape}" + context()

    # --- the values
    names = [n for n in notation.tensors]
    r_default, a_default = tolerance([notation.tensors[n].dtype for n in names])
    rtol = r_default if rtol is None else rtol
    atol = a_default if atol is None else atol
    finite = np.abs(expected[np.isfinite(expected)])
    magnitude = max(1.0, float(finite.max()) if finite.size else 1.0)
    with np.errstate(invalid="ignore"):
        err = np.abs(got - expected)
        ok = np.isclose(got, expected, rtol=rtol, atol=atol * magnitude, equal_nan=True)
    max_error = float(np.nanmax(err)) if err.size and not np.all(np.isnan(err)) else 0.0
    if not ok.all():
        bad = np.argwhere(~ok)
        where = tuple(int(x) for x in bad[0])
        flat_err = np.where(ok, -1.0, np.nan_to_num(err, nan=np.inf))
        worst = np.unravel_index(int(np.argmax(flat_err)), err.shape) if err.ndim else ()
        worst = tuple(int(x) for x in worst)
        raise AssertionError(
            f"kernel result differs from the reference at {len(bad)} of {err.size} entries; "
            f"max |error| = {max_error:.6g} at {worst} (got {got[worst]!r}, expected {expected[worst]!r}); "
            f"first bad entry {where}: got {got[where]!r}, expected {expected[where]!r}; "
            f"rtol={rtol:g}, atol={atol:g} x magnitude {magnitude:g}" + context())
    return KernelCheck(kernel, ops, result, expected, max_error)
