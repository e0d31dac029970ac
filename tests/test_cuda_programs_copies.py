"""Transposed and diagonal copies of a temporary made inside a program's one CUDA kernel.

A statement reading a temporary written earlier in the run through a transposed
copy (``Z[j,i] = T[i,j]``, ``T`` csr) or its diagonal (``v[i] = T[i,i]``) used to
start a launch of its own (the runtime made the copy between launches); now the
copy is one more block of the run's kernel (spcomp/program_gpu_copies.py,
lower/device_copies.py): a counting sort on one thread, or a gather a thread per
row. Examples pin the launch counts (2 before, 1 now), the results against
numpy and bitwise against the statements run as kernels of their own (the
host's copy); random chains run under cuda-sim; the kernels compile with nvcc.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.backends.cuda import nvcc
from spcomp.errors import TranspositionWarning, UnsupportedError
from spcomp.formats import Format
from spcomp.lower.device_copies import gatherable, transposable
from spcomp.lower.diagonal import Diagonal
from spcomp.runtime import launch
from spcomp.testing.programs import close, program_operands, programs, reference_program

from conftest import examples
from test_cuda_programs import fused_kernels, separately

M, N = 600, 40  # several blocks of 256 threads: the barriers are crossed for real
A = sp.random(M, N, density=0.2, format="csr", random_state=21)
B = sp.random(N, M, density=0.1, format="csr", random_state=22)
S = (sp.random(M, M, density=0.02, format="csr", random_state=23) + 0.5 * sp.eye(M, format="csr")).tocsr()
S.data[::5] = 0  # some diagonal entries absent
S.eliminate_zeros()
D = np.linspace(-1, 1, M)
X = np.linspace(-1, 1, N)
OPERANDS = {"A": A, "B": B, "S": S, "d": D, "x": X}


@pytest.fixture(autouse=True)
def _several_blocks(monkeypatch):
    # four resident blocks under cuda-sim: a copy made by every block, not one thread, would show
    monkeypatch.setenv("SPCOMP_SIM_WORKERS", "4")


def _compile(text, formats, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TranspositionWarning)
        return spcomp.compile(text, formats=formats, backend="cuda-sim", **kw)


def _dense(v):
    return v.to_numpy() if hasattr(v, "to_numpy") else np.asarray(v)


def _same(a, b) -> bool:
    """Bitwise the same arrays for a sparse result (the host's copy, exactly); close for a
    dense one (a reader of a copy may map its rows otherwise alone -- a warp per row --
    and sum in another order)."""
    if hasattr(a, "levels"):
        return same_arrays(a, b)
    return close(_dense(a), _dense(b))


def same_arrays(a, b) -> bool:
    """Whether two sparse Tensors have the same format, shape and arrays, bit for bit."""
    if a.format != b.format or a.shape != b.shape or len(a.levels) != len(b.levels):
        return False
    for x, y in zip(a.levels, b.levels):
        if sorted(x) != sorted(y) or not all(np.array_equal(x[key], y[key]) for key in x):
            return False
    return np.array_equal(a.vals, b.vals)


def _last(result):
    """The last statement's output of a call's result (a dict where it returns several)."""
    return result[list(result)[-1]] if isinstance(result, dict) else result


def _ops(k) -> dict:
    return {n: OPERANDS[n] for n in k.inputs}


# (text, formats, reference, launches before this change)
EXAMPLES = [
    ("T[i,j] = A[i,j]*3; Z[j,i] = T[i,j]", {"A": "csr", "T": "csr", "Z": "csr"}, lambda: 3 * A.toarray().T, 2),
    ("T[i,j] = A[i,k]*B[k,j]; Z[j,i] = 2*T[i,j]; y[j] = Z[j,i]*d[i]",
     {"A": "csr", "B": "csr", "T": "csr", "Z": "csr"}, lambda: 2 * (A @ B).toarray().T @ D, 2),
    ("T[i,j] = S[i,j]*3; v[i] = T[i,i]", {"S": "csr", "T": "csr"}, lambda: 3 * S.diagonal(), 2),
    ("T[i,j] = S[i,j]*3; v[i] = T[i,i]*2; s = T[i,i]", {"S": "csr", "T": "csr"}, lambda: 3 * S.diagonal().sum(), 2),
]


@pytest.mark.parametrize("text,formats,reference,before", EXAMPLES)
def test_a_copy_of_a_temporary_is_made_inside_the_launch(text, formats, reference, before):
    k = _compile(text, formats)
    assert k.launches == 1 < before, k.loops
    (seg,) = fused_kernels(k)
    assert "inside the launch by ONE thread" in k.loops or "diagonal gathered inside the launch" in k.loops
    got = _last(k(**_ops(k)))
    assert k.last_launches == 1
    assert np.allclose(_dense(got), reference())
    assert _same(got, _last(separately(k, _ops(k))))
    assert k.last_launches >= before  # one kernel per statement
    assert seg.gave_up == 0


def test_the_transposed_copy_after_a_rerun_for_room(monkeypatch):
    # the writer's estimate is far too small: the launch stops before the copy, runs again with room
    monkeypatch.setattr(launch, "FIRST_CAPACITY", 3)
    k = _compile("T[i,j] = A[i,j]*3; Z[j,i] = T[i,j]", {"A": "csr", "T": "csr", "Z": "csr"})
    (seg,) = fused_kernels(k)
    before = seg.reruns
    got = k(A=A)
    assert seg.reruns > before and k.launches == 1
    assert np.array_equal(_dense(got), 3 * A.toarray().T)


def test_a_reader_of_a_copy_has_room_for_it_at_once():
    # the reader's estimate sees T empty before the launch: it adds T's room, so no rerun
    k = _compile("T[i,j] = A[i,j]*3; Z[j,i] = T[i,j]", {"A": "csr", "T": "csr", "Z": "csr"})
    (seg,) = fused_kernels(k)
    before = seg.reruns  # (the compiled program is cached: a test before may have rerun it)
    k(A=A)
    assert seg.reruns == before


def test_an_empty_temporary_is_copied():
    empty = sp.csr_matrix((M, N))
    k = _compile("T[i,j] = A[i,j]*3; Z[j,i] = T[i,j]", {"A": "csr", "T": "csr", "Z": "csr"})
    got = k(A=empty)
    assert k.launches == 1 and not _dense(got).any() and _dense(got).shape == (N, M)


def test_a_copy_the_device_does_not_make_keeps_a_kernel_of_its_own():
    # a dcsr temporary read transposed into csr asks for a cc copy: the runtime makes it between launches
    k = _compile("T[i,j] = A[i,j]*3; Z[j,i] = T[i,j]", {"A": "csr", "T": "dcsr", "Z": "csr"})
    assert k.launches == 2 and "a kernel of its own" in k.loops
    assert np.allclose(_dense(k(A=A)), 3 * A.toarray().T)


def test_which_copies_the_device_makes():
    csr, csc, dcsr, coo = (Format.parse(f) for f in ("dc", "dc:1,0", "cc", "c(nonunique) q"))
    assert transposable(csr, csc) and transposable(csc, csr) and transposable(coo, csc)
    assert transposable(dcsr, csc) and not transposable(csr, csr) and not transposable(dcsr, Format.parse("cc:1,0"))
    assert not transposable(Format.parse("ccc"), Format.parse("dcc:2,1,0"))
    diag = Diagonal("T", csr, (0, 0), ("i", "i"), Format.parse("d"))
    assert gatherable(diag, csr) and gatherable(diag, Format.parse("dd")) and not gatherable(diag, dcsr)
    assert not gatherable(Diagonal("T", csr, (0, 0), ("i", "i"), Format.parse("c")), csr)


@pytest.mark.skipif(not nvcc.nvcc_available(), reason="nvcc (the CUDA toolkit) is not installed")
@pytest.mark.parametrize("text,formats", [(t, f) for t, f, _r, _b in EXAMPLES[:1] + EXAMPLES[2:3]])
def test_every_kernel_with_a_copy_compiles_with_nvcc(text, formats):
    k = _compile(text, formats)
    (seg,) = fused_kernels(k)
    for built in seg.built.values():
        report = nvcc.check_source(built.compiled[0], arch="sm_90")
        assert set(report) == {built.function.name}


# ----------------------------------------------------------- random chains

@st.composite
def copy_chains(draw):
    """``(text, formats, reference)``: T (M x N or M x M) written from A or S in a
    drawn format, then read transposed or on its diagonal into a drawn output, then
    maybe reduced into a vector; ``reference`` is numpy's value of the last output."""
    diagonal = draw(st.booleans())
    src, src_dense = ("S", S.toarray()) if diagonal else ("A", A.toarray())
    scale = draw(st.sampled_from([2.0, -0.5]))
    fmt_t = draw(st.sampled_from(["csr", "csc", "coo", "dense"] if diagonal else ["csr", "csc", "coo"]))
    text = [f"T[i,j] = {src}[i,j] * {scale}"]
    t = src_dense * scale
    if diagonal:
        text.append("v[i] = T[i,i] + d[i]")
        return "; ".join(text), {src: "csr", "T": fmt_t}, np.diagonal(t) + D
    fmt_z = draw(st.sampled_from(["csr", "dense"]))
    text.append("Z[j,i] = T[i,j] * 2")
    z = 2 * t.T
    formats = {"A": "csr", "T": fmt_t, "Z": fmt_z}
    if draw(st.booleans()):
        text.append("y[i] = Z[i,j] * d[j]")
        return "; ".join(text), formats, z @ D
    return "; ".join(text), formats, z


@settings(max_examples=examples(3), deadline=None)
@given(copy_chains())
def test_random_copy_chains_cuda_sim(chain):
    text, formats, reference = chain
    k = _compile(text, formats)
    got = k(**_ops(k))
    assert close(_dense(got), reference), (text, formats)
    if formats["T"] == "csr":  # a copy the device makes: the run is one launch
        assert k.launches == 1, (text, formats, k.loops)
    assert _same(got, separately(k, _ops(k))) or close(_dense(separately(k, _ops(k))), reference)


@settings(max_examples=examples(3), deadline=None)
@given(st.data())
def test_random_programs_with_transposed_reads_cuda_sim(data):
    # any program, its temporaries read transposed often: what joins agrees with the
    # reference and with the statements run as kernels of their own
    case = data.draw(programs(max_statements=3, transposed_reads=True))
    ops = data.draw(program_operands(case))
    try:
        k = _compile(case.text, case.formats, outputs=list(case.outputs))
    except UnsupportedError as e:
        assert str(e)
        return
    assert k.loops.count("one native function") + k.loops.count("a kernel of its own") == k.launches
    got = k(**{n: v[1] for n, v in ops.items()})
    got = got if isinstance(got, dict) else {case.outputs[0]: got}
    want = reference_program(k.program, {n: v[0] for n, v in ops.items()})
    alone = separately(k, {n: v[1] for n, v in ops.items()})
    alone = alone if isinstance(alone, dict) else {case.outputs[0]: alone}
    for name in case.outputs:
        assert close(got[name], want[name]), (str(case), name)
        assert close(alone[name], want[name]), (str(case), name)
