"""Property tests: random expressions x random formats x shapes x densities, checked
against the float64 reference (spcomp.testing.check_kernel).

Every generated case ends in one of three outcomes, counted per test and printed
in the "spcomp property-test outcomes" section of the pytest summary:

* ``ok``: the kernel compiled, ran, and matched the reference;
* ``refused``: the compiler raised UnsupportedError with a non-empty message
  (allowed, but a test fails when more than 20% of its cases are refused);
* ``known bug``: a case that hits a bug listed in ``KNOWN_BUGS`` (each with a
  strict xfail reproduction in test_kernels.py; remove the entry with the fix).

Anything else (a wrong result, another exception, a crash) fails the test.
Example counts are set per test (see tests/conftest.py for the profiles and
SPCOMP_HYPOTHESIS_EXAMPLES).
"""
from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.errors import LimitError, PackedOverflowError, SpcompError, TranspositionWarning, UnsupportedError
from spcomp.formats import Format
from spcomp.testing import check_kernel, densify, fit_packed, reference
from spcomp.testing.strategies import (ExpressionCase, expressions, formats, operands,
                                       output_formats, tensors)

from conftest import examples


# ------------------------------------------------------------------ known bugs

#: name -> predicate(kernel or None, exception or None): cases that hit a known,
#: reported bug (with a strict-xfail reproduction in test_kernels.py) are counted,
#: not failed. Empty when no bug is open. Past entries: two transposes of one
#: tensor sharing a storage name; a COO level in a dense-range loop (both fixed).
KNOWN_BUGS: dict = {}


def _known_bug(kernel, exc):
    for name, pred in KNOWN_BUGS.items():
        if pred(kernel, exc):
            return name
    return None


# ------------------------------------------------------------------ running one case

def _compile(case: ExpressionCase, stats, dtype="float64", **kw):
    """The kernel, or None when refused / a known bug (counted)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TranspositionWarning)
            k = spcomp.compile(case.text, formats=case.formats, dtype=dtype, **kw)
    except (UnsupportedError, LimitError) as e:  # a LimitError: more lattice cases than spcomp compiles
        assert str(e).strip(), f"{type(e).__name__} without a message for {case}"
        stats.refused(_reason(e))
        return None
    except SpcompError as e:
        bug = _known_bug(None, e)
        if bug is None:
            raise AssertionError(f"compiling {case} raised {type(e).__name__}: {e}") from e
        stats.known_bug(bug)
        return None
    bug = _known_bug(k, None)
    if bug is not None:
        stats.known_bug(bug)
        return None
    return k


def _reason(e: Exception) -> str:
    """The refusal message with names and numbers blurred, to group similar ones."""
    line = str(e).splitlines()[0]
    line = re.sub(r"'[^']*'", "'..'", line)
    return re.sub(r"\b[A-Z]\w*\[[\w,]*\]|\b[A-Z]\b", "X", line)[:160]


def run_case(data, case: ExpressionCase, stats, dtype="float64", dtypes=None, **draw_kw):
    """Compile ``case``, draw operands, check against the reference, count the outcome.
    Returns the KernelCheck, or None when refused / known bug."""
    k = _compile(case, stats, dtype, dtypes=dtypes)
    if k is None:
        return None
    ops = data.draw(operands(case, dtype=dtype, dtypes=dtypes, **draw_kw),
                    label="operands")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TranspositionWarning)
            result = check_kernel(case.text, case.formats, ops, dtype=dtype, dtypes=dtypes)
    except (SpcompError, AssertionError) as e:
        bug = _known_bug(k, e)
        if bug is None:
            raise
        stats.known_bug(bug)
        return None
    stats.ok()
    _features(stats, case, k, result)
    return result


def _features(stats, case, k, result):
    fmt = k.notation.lhs.tensor.format
    out = ("scalar output" if not fmt.levels else "dense output" if fmt.is_dense
           else "packed output" if fmt.levels[-1].letter == "p"
           else "coo output" if any(l.letter == "q" for l in fmt.levels) else "compressed output")
    names = [out]
    if any(l.is_dense for l in fmt.levels[[l.is_dense for l in fmt.levels].index(False):]) \
            if not fmt.is_dense else False:
        names.append("dense under sparse output")
    if any(l.letter == "b" for l in fmt.levels):
        names.append("bitmap output")
    if any(l.letter == "b" for n, t in k.notation.tensors.items() if n != case.output for l in t.format.levels):
        names.append("bitmap input")
    if case.accumulate:
        names.append("+=")
    if k.warnings:
        names.append("transposed operand")
    if any(t.format.levels and t.format.levels[-1].letter == "p" or any(l.letter == "p" for l in t.format.levels)
           for n, t in k.notation.tensors.items() if n != case.output):
        names.append("packed input")
    if "blocks of" in k.ir:
        names.append("register-blocked")
    if result.expected.size == 0:
        names.append("empty result")
    elif not np.any(result.expected):
        names.append("all-zero result")
    stats.feature(*names)


def _settings(n):
    return settings(max_examples=examples(n))


# ================================================================== float64

def test_random_kernels_float64(outcome_stats):
    """1-4 operands, orders 0-3, + - *, functions, literals, reductions, transposed
    and accumulated outputs; random input formats (d c q p, mode orders) and output
    formats (dense, csr/dcsr/csf, coo, packed); sizes with 0 and 1; densities 0..1."""

    @_settings(300)
    @given(st.data())
    def run(data):
        case = data.draw(expressions(max_operands=4, max_order=3), label="case")
        run_case(data, case, outcome_stats)

    run()
    outcome_stats.assert_refusal_rate(0.2)


def _sparse_output_cases(outcome_stats, n):
    """``n`` random cases whose output is sparse (compressed, coo or packed), run."""

    def sparse_out(ndim):
        return output_formats(ndim, allow_dense=False)

    @_settings(n)
    @given(st.data())
    def run(data):
        case = data.draw(expressions(max_operands=3, max_order=3, min_output_order=1,
                                     output_format=sparse_out), label="case")
        run_case(data, case, outcome_stats)

    run()
    outcome_stats.assert_refusal_rate(0.2)


def test_random_sparse_outputs_float64(outcome_stats):
    """Every case has a sparse output: compressed (csr/dcsr/csf), coo, or packed."""
    _sparse_output_cases(outcome_stats, 120)


def test_random_sparse_outputs_grow_from_sixteen_entries(outcome_stats, monkeypatch):
    """The same cases with every growable output starting at the kernel's minimum
    (16 entries): each row's room (``AppendSink.reserve``: the rows' segment lengths
    summed, a dense loop's size, a workspace's touched count) and each per-entry
    check must grow the arrays before they are written, in every output shape."""
    from spcomp.runtime import launch
    monkeypatch.setattr(launch, "FIRST_CAPACITY", 1)
    _sparse_output_cases(outcome_stats, 80)


# dense rows accumulated under a sparse loop: the shapes register blocking rewrites
_ROW_ACCUMULATIONS = (
    ("Y[i,w] = A[i,j] * B[j,w]", {"A": 2, "B": 2}),
    ("Y[i,w] += A[i,j] * B[j,w]", {"A": 2, "B": 2}),
    ("Y[i,w] = alpha * A[i,j] * (B[j,w] - C[j,w])", {"A": 2, "B": 2, "C": 2, "alpha": 0}),
    ("Y[i,w] = A[i,j,l] * B[j,w] * C[l,w]", {"A": 3, "B": 2, "C": 2}),
    ("Y[i,w] = relu(A[i,j]) * B[j,w] * c[w]", {"A": 2, "B": 2, "c": 1}),
    ("Y[w] = a[j] * B[j,w]", {"a": 1, "B": 2}),
)


def test_random_row_accumulations_wide(outcome_stats):
    """Register blocking (lower/regblock.py) runs a dense loop in blocks of 32
    float64 / 64 float32 columns; the usual sizes (0-7) only reach its remainder
    loop. Here SpMM/MTTKRP-shaped kernels with a random format for the sparse
    operand, random dtype and a 0-130 wide ``w`` run the blocks, the remainder and
    both, against einsum; the generic property tests cover every other shape."""

    @_settings(80)
    @given(st.data())
    def run(data):
        text, orders = data.draw(st.sampled_from(_ROW_ACCUMULATIONS), label="expression")
        sparse = "a" if "a[j]" in text else "A"
        fmt = data.draw(formats(orders[sparse]), label="format")
        case = ExpressionCase(text, {sparse: fmt}, {"Y": 2 if "Y[i,w]" in text else 1, **orders})
        dtype = data.draw(st.sampled_from(["float64", "float32"]), label="dtype")
        width = data.draw(st.sampled_from([0, 1, 31, 32, 33, 63, 64, 65, 130]), label="w")
        run_case(data, case, outcome_stats, dtype=dtype, sizes={"w": width})

    run()
    outcome_stats.assert_refusal_rate(0.2)
    assert outcome_stats.features["register-blocked"] > 10, outcome_stats.summary()


def test_random_kernels_explicit_drop_zeros(outcome_stats):
    """drop_zeros=True/False on sparse outputs: the values agree either way."""

    def sparse_out(ndim):
        return output_formats(ndim, allow_dense=False, allow_packed=False)

    @_settings(30)
    @given(st.data(), st.booleans())
    def run(data, drop):
        case = data.draw(expressions(max_operands=3, max_order=2, min_output_order=1,
                                     output_format=sparse_out), label="case")
        k = _compile(case, outcome_stats, drop_zeros=drop)
        if k is None:
            return
        ops = data.draw(operands(case), label="operands")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TranspositionWarning)
            check_kernel(case.text, case.formats, ops, drop_zeros=drop)
        outcome_stats.ok()

    run()
    outcome_stats.assert_refusal_rate(0.2)


# ================================================================== float32 / bfloat16

def test_random_kernels_float32(outcome_stats):
    @_settings(40)
    @given(st.data())
    def run(data):
        case = data.draw(expressions(max_operands=3, max_order=3), label="case")
        run_case(data, case, outcome_stats, dtype="float32")

    run()
    outcome_stats.assert_refusal_rate(0.2)


def test_random_kernels_bfloat16(outcome_stats):
    """bfloat16 storage (float32 accumulation); sometimes a float32 output (FFN style)."""

    @_settings(40)
    @given(st.data(), st.booleans())
    def run(data, f32_out):
        case = data.draw(expressions(max_operands=3, max_order=2), label="case")
        dtypes = {case.output: "float32"} if f32_out else None
        run_case(data, case, outcome_stats, dtype="bfloat16", dtypes=dtypes)

    run()
    outcome_stats.assert_refusal_rate(0.2)


# ================================================================== packed blocks

_PACKED_SIZES = (0, 1, 3, 5, 7, 9)  # mostly not multiples of the block sizes below


def test_random_packed_operands(outcome_stats):
    """Packed-block inputs p(B,K) / p(K) with B not dividing the dimension, empty rows
    (empty_rows=0.5), full blocks (density 1) and empty tensors (density 0)."""

    def packed_heavy(ndim):
        return formats(ndim, kinds="dp", presets=False, max_block=4)

    @_settings(50)
    @given(st.data())
    def run(data):
        case = data.draw(expressions(max_operands=3, max_order=2, input_formats=packed_heavy,
                                     scalars=False), label="case")
        sizes = {i: data.draw(st.sampled_from(_PACKED_SIZES)) for i in "ijk"}
        run_case(data, case, outcome_stats, sizes=sizes,
                 density=st.sampled_from([0.0, 0.3, 0.7, 1.0]), empty_rows=st.sampled_from([0.0, 0.5]))

    run()
    outcome_stats.assert_refusal_rate(0.2)


_EXACT = ("relu", "abs", "max", "min")


def test_random_packed_outputs(outcome_stats):
    """Packed outputs with any 1 <= K <= B: either the result is right, or the kernel
    raises PackedOverflowError and the reference really has a block with more than
    K nonzeros (exact functions only, so a zero is a zero on both sides)."""

    def packed_out(ndim):
        return output_formats(ndim, allow_dense=False, packed_k="any", max_block=4).filter(
            lambda f: "p(" in f)

    @_settings(50)
    @given(st.data())
    def run(data):
        case = data.draw(expressions(max_operands=3, max_order=2, min_output_order=1, functions=_EXACT,
                                     output_format=packed_out), label="case")
        sizes = {i: data.draw(st.sampled_from(_PACKED_SIZES)) for i in "ijk"}
        k = _compile(case, outcome_stats)
        if k is None:
            return
        ops = data.draw(operands(case, sizes=sizes), label="operands")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", TranspositionWarning)
                check_kernel(case.text, case.formats, ops)
        except PackedOverflowError as e:
            dense = {n: densify(v) for n, v in ops.items() if n != case.output}
            old = densify(ops[case.output]) if case.output in ops else None
            ref = reference(k.notation, dense, out=old)
            fmt = k.notation.lhs.tensor.format
            assert not np.array_equal(fit_packed(ref, fmt), ref), \
                f"PackedOverflowError but every block of the result fits: {case}\n{e}"
            assert e.largest_count is not None and e.largest_count > fmt.levels[-1].K, str(e)
            outcome_stats.feature("overflow raised")
        outcome_stats.ok()

    run()
    outcome_stats.assert_refusal_rate(0.2)


# ================================================================== schedules

@st.composite
def schedules(draw, indices):
    """A random Schedule over ``indices``: reorder, parallelize, precompute,
    no_precompute, sequential, vectorize, unroll, keep_layout, no_blas (some of
    them illegal)."""
    s = spcomp.Schedule()
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["reorder", "parallelize", "precompute", "no_precompute", "sequential",
                                     "vectorize", "unroll", "keep_layout", "no_blas"]))
        if kind == "reorder" and indices:
            s = s.reorder(*draw(st.permutations(indices)))
        elif kind == "parallelize" and indices:
            s = s.parallelize(draw(st.sampled_from(indices)))
        elif kind == "precompute" and indices:
            s = s.precompute(draw(st.sampled_from(indices)))
        elif kind == "no_precompute":
            s = s.no_precompute()
        elif kind == "sequential":
            s = s.sequential()
        elif kind == "keep_layout":
            s = s.keep_layout()
        elif kind == "no_blas":
            s = s.no_blas()
        elif kind == "vectorize" and indices:
            s = s.vectorize(draw(st.sampled_from(indices)), draw(st.sampled_from([0, 4, 8])))
        elif kind == "unroll" and indices:
            s = s.unroll(draw(st.sampled_from(indices)), draw(st.integers(1, 4)))
    return s


def test_random_schedules(outcome_stats):
    """Random schedules on random kernels: the result is right, or the schedule is
    refused with a ScheduleError that names an index of the expression."""

    @_settings(60)
    @given(st.data())
    def run(data):
        case = data.draw(expressions(max_operands=3, max_order=2), label="case")
        used = sorted({c for c in re.findall(r"\[([\w,]*)\]", case.text) for c in c.split(",") if c})
        sched = data.draw(schedules(used), label="schedule")
        try:
            k = _compile(case, outcome_stats, schedule=sched)
        except AssertionError as e:
            cause = e.__cause__
            if not isinstance(cause, spcomp.ScheduleError):
                raise
            msg = str(cause)
            assert any(f"'{i}'" in msg or f" {i} " in msg or f"({i})" in msg for i in used), \
                f"ScheduleError for {sched} on {case} names no index: {msg}"
            outcome_stats.feature("schedule refused")
            outcome_stats.ok()
            return
        if k is None:
            return
        ops = data.draw(operands(case), label="operands")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TranspositionWarning)
            check_kernel(case.text, case.formats, ops, schedule=sched)
        outcome_stats.ok()
        outcome_stats.feature("schedule ran")

    run()
    outcome_stats.assert_refusal_rate(0.2)


# ================================================================== unordered levels

def test_random_unordered_inputs(outcome_stats):
    """Unordered compressed / packed levels: fine to iterate, refused (with a message
    naming the level) when a loop must merge them."""

    def unordered(ndim):
        return formats(ndim, kinds="dcp", allow_unordered=True, presets=False)

    @_settings(30)
    @given(st.data())
    def run(data):
        case = data.draw(expressions(max_operands=3, max_order=2, input_formats=unordered), label="case")
        try:
            run_case(data, case, outcome_stats)
        except UnsupportedError as e:  # refusals at call time are not expected either
            raise AssertionError(f"{case}: UnsupportedError at call time: {e}") from e

    run()
    for reason in outcome_stats.refusals:
        if "unordered" not in reason:
            # other refusals are allowed too, but they must say why
            assert reason.strip()


# ================================================================== the strategies themselves

@_settings(150)
@given(st.data())
def test_formats_strategy_gives_valid_input_formats(data):
    ndim = data.draw(st.integers(0, 4))
    spec = data.draw(formats(ndim, allow_unordered=data.draw(st.booleans())))
    fmt = Format.parse(spec, ndim)
    assert fmt.ndim == ndim
    shape = data.draw(st.lists(st.sampled_from([0, 1, 2, 3, 5]), min_size=ndim, max_size=ndim))
    dense, t = data.draw(tensors(shape, spec))
    assert t.format == fmt
    t.validate()
    np.testing.assert_array_equal(t.to_numpy(), dense)


@_settings(100)
@given(st.data())
def test_output_formats_strategy_parses(data):
    ndim = data.draw(st.integers(0, 3))
    spec = data.draw(output_formats(ndim, packed_k=data.draw(st.sampled_from(["full", "any"]))))
    assert Format.parse(spec, ndim).ndim == ndim


@_settings(150)
@given(expressions())
def test_expressions_strategy_gives_well_formed_expressions(case):
    from spcomp.frontend import to_notation
    notation = to_notation(case.text, formats=case.formats)
    assert notation.lhs.tensor.name == case.output
    assert {n: t.order for n, t in notation.tensors.items()} == case.orders
    used = {i.name for a in _accesses(notation.rhs) for i in a.indices}
    assert {i.name for i in notation.lhs.indices} <= used  # every output size is known


def _accesses(e):
    from spcomp.notation import accesses
    return accesses(e)


@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
def test_tensors_strategy_respects_dtype_and_packed_capacity(dtype):
    @_settings(20)
    @given(st.data())
    def run(data):
        spec = data.draw(formats(2, kinds="dp", presets=False, max_block=3))
        dense, t = data.draw(tensors((data.draw(st.integers(0, 6)), 7), spec, density=1.0, dtype=dtype))
        assert t.dtype.name == dtype
        assert t.format == Format.parse(spec, 2)  # K was not grown
        np.testing.assert_array_equal(t.to_numpy().astype(np.float64), dense)

    run()
