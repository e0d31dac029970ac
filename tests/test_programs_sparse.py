"""Programs whose statements write sparse temporaries: one native function.

Random chains of 1 to 4 statements over ``[i,k]`` tensors (SpGEMM, sparse adds
and products, scalings, a closing reduction), each temporary in a random format
among those assembled in one pass (csr, dcsr, coo, dense), are checked against
numpy.einsum, and asserted to run as one native function (``k.launches``, the
``k.loops`` header, one kernel in ``k.ir``) whose sparse temporaries are
assembled and freed inside it.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp.errors import TranspositionWarning
from spcomp.lower import record
from spcomp.runtime import launch
from spcomp.testing.check import densify

from conftest import examples, spcomp_threads

# statements that make the first [i,k] tensor from the inputs (einsum of the dense inputs)
FIRST = [
    ("{t}[i,k] = A[i,j] * B[j,k]", lambda env: np.einsum("ij,jk->ik", env["A"], env["B"])),
    ("{t}[i,k] = D[i,k] * E[i,k]", lambda env: np.einsum("ik,ik->ik", env["D"], env["E"])),
    ("{t}[i,k] = D[i,k] + A[i,j] * B[j,k]", lambda env: env["D"] + np.einsum("ij,jk->ik", env["A"], env["B"])),
]
# statements that read the previous [i,k] tensor {p} and write a new one
NEXT = [
    ("{t}[i,k] = {p}[i,k] + D[i,k]", lambda env, p: env[p] + env["D"]),
    ("{t}[i,k] = {p}[i,k] * E[i,k]", lambda env, p: np.einsum("ik,ik->ik", env[p], env["E"])),
    ("{t}[i,k] = relu({p}[i,k]) * 2", lambda env, p: 2 * np.maximum(env[p], 0)),
    ("{t}[i,k] = {p}[i,k] - A[i,j] * B[j,k]", lambda env, p: env[p] - np.einsum("ij,jk->ik", env["A"], env["B"])),
]
# closing reductions over the last tensor
LAST = [
    ("y[i] = {p}[i,k] * c[k]", lambda env, p: np.einsum("ik,k->i", env[p], env["c"])),
    ("Y[i,l] = {p}[i,k] * F[k,l]", lambda env, p: np.einsum("ik,kl->il", env[p], env["F"])),
    ("s = sum(i, sum(k, abs({p}[i,k])))", lambda env, p: np.abs(env[p]).sum()),
]
ONE_PASS = ["csr", "dcsr", "coo", "dense"]


@st.composite
def chains(draw):
    """``(text, formats, outputs, reference)``: 1 to 4 statements, sparse temporaries."""
    count = draw(st.integers(1, 4))
    texts, refs, fmts = [], [], {}
    text, ref = draw(st.sampled_from(FIRST))
    texts.append(text.format(t="T1"))
    refs.append(("T1", lambda env, ref=ref: ref(env)))
    fmts["T1"] = draw(st.sampled_from(ONE_PASS[:3]))  # at least the first one sparse
    last = "T1"
    for n in range(2, count + 1):
        if n == count and count > 1 and draw(st.booleans()):
            text, ref = draw(st.sampled_from(LAST))
            name = text.split("[")[0].split(" ")[0]
            texts.append(text.format(p=last))
            refs.append((name, lambda env, ref=ref, p=last: ref(env, p)))
            last = name
            break
        text, ref = draw(st.sampled_from(NEXT))
        name = f"T{n}"
        texts.append(text.format(t=name, p=last))
        refs.append((name, lambda env, ref=ref, p=last: ref(env, p)))
        fmts[name] = draw(st.sampled_from(ONE_PASS))
        last = name
    return "; ".join(texts), fmts, last, refs


def _inputs(draw, sizes):
    I, J, K, L = sizes
    seeds = draw(st.lists(st.integers(0, 2 ** 16), min_size=4, max_size=4))
    rng = np.random.default_rng(seeds[0])
    density = draw(st.sampled_from([0.0, 0.2, 0.6, 1.0]))
    return {
        "A": sp.random(I, J, density=density, format="csr", random_state=seeds[1]),
        "B": sp.random(J, K, density=0.4, format="csr", random_state=seeds[2]),
        "D": sp.random(I, K, density=0.3, format="csr", random_state=seeds[3]),
        "E": rng.standard_normal((I, K)),
        "c": rng.standard_normal(K),
        "F": rng.standard_normal((K, L)),
    }


INPUT_FORMATS = {"A": "csr", "B": "csr", "D": "csr"}


@settings(max_examples=examples(30), deadline=None)
@given(st.data())
def test_sparse_temporary_chains_run_in_one_function(data):
    text, fmts, out, refs = data.draw(chains(), label="program")
    sizes = data.draw(st.tuples(*[st.integers(1, 9)] * 4), label="sizes")
    ops = _inputs(data.draw, sizes)
    formats = {n: f for n, f in {**INPUT_FORMATS, **fmts}.items() if f"{n}[" in text}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TranspositionWarning)
        k = spcomp.compile(text, formats=formats, outputs=[out])
    used = {n: v for n, v in ops.items() if n in k.inputs}
    env = {n: densify(v) for n, v in used.items()}
    for name, ref in refs:
        env[name] = ref(env)
    got = k(**used)
    assert np.allclose(np.asarray(densify(got) if not np.isscalar(got) else got), env[out],
                       rtol=1e-10, atol=1e-10), text
    if len(refs) > 1:
        assert k.launches == 1 and k.ir.count("int32_t kernel(") == 1, (text, k.loops)
        assert k.loops.startswith(f"# statements {', '.join(str(j + 1) for j in range(len(refs)))}: one native")
        for name in k.temporaries:
            if fmts.get(name, "dense") != "dense":
                assert f"# {name}: sparse, assembled inside the function and freed there" in k.loops


def _spgemm_chain(formats=None):
    fmts = {"A": "csr", "B": "csr", "T": "csr", "U": "csr", "D": "csr", **(formats or {})}
    return spcomp.compile("T[i,k] = A[i,j]*B[j,k]\nU[i,k] = T[i,k] + D[i,k]\ny[i] = U[i,k]*c[k]",
                          formats=fmts)


def chain_operands(n=30, seed=1):
    """A, B, D (csr, n x n) and c for the SpGEMM-add-SpMV chain (test_programs_chunks too)."""
    rng = np.random.default_rng(seed)
    return dict(A=sp.random(n, n, density=0.2, format="csr", random_state=rng),
                B=sp.random(n, n, density=0.2, format="csr", random_state=rng),
                D=sp.random(n, n, density=0.1, format="csr", random_state=rng),
                c=rng.standard_normal(n))


def _want(ops):
    return (ops["A"] @ ops["B"] + ops["D"]) @ ops["c"]


def test_temporaries_grow_inside_the_function(monkeypatch):
    """Arrays that start at one entry are grown by realloc in the function, and every
    call's result is right (the grown arrays freed and allocated anew each call)."""
    monkeypatch.setattr(launch, "FIRST_CAPACITY", 1)
    k = _spgemm_chain()
    assert k.launches == 1
    ops = chain_operands()
    for _ in range(3):
        assert np.allclose(k(**ops), _want(ops))


def test_a_temporary_past_the_32_bit_limit_reruns_at_64_bits(monkeypatch, tmp_path):
    monkeypatch.setattr(record, "INDEX32_LIMIT", 40)
    monkeypatch.setenv("SPCOMP_CACHE_DIR", str(tmp_path / "cache"))
    spcomp.clear_cache()
    try:
        k = _spgemm_chain()
        ops = chain_operands()
        assert (ops["A"] @ ops["B"]).nnz > 40   # T outgrows the 32-bit kernel's positions
        assert np.allclose(k(**ops), _want(ops))
        small = chain_operands(n=5)
        assert np.allclose(k(**small), _want(small))
    finally:
        spcomp.clear_cache()


def test_bad_operand_of_a_fused_sparse_run_is_named():
    from spcomp.errors import ShapeError
    k = _spgemm_chain()
    ops = chain_operands()
    ops["D"] = sp.random(29, 30, density=0.1, format="csr", random_state=0)
    with pytest.raises(ShapeError, match="D"):
        k(**ops)


@settings(max_examples=examples(25), deadline=None)
@given(st.data())
def test_sparse_accumulate_joins_the_function(data):
    """A sparse ``+=`` (rewritten to ``C = C_old + E``: it reads the caller's tensor
    and assembles a new one) runs inside the fused function, after or between sparse
    temporaries, at 1 and 2 threads; the caller's tensor is left as it was."""
    text, fmts, last, refs = data.draw(chains(), label="program")
    if last not in fmts:   # a closing reduction: accumulate its input instead
        text, last, refs = "; ".join(text.split("; ")[:-1]), refs[-2][0], refs[:-1]
    c_format = data.draw(st.sampled_from(["csr", "dcsr"]), label="C format")
    scale = data.draw(st.sampled_from(["* 2", "+ D[i,k]"]), label="added")
    text += f"; C[i,k] += {last}[i,k] {scale}"
    outputs = ["C"]
    if data.draw(st.booleans(), label="read after"):
        text += "; y[i] = C[i,k] * c[k]"
        outputs.append("y")
    sizes = data.draw(st.tuples(*[st.integers(1, 9)] * 4), label="sizes")
    ops = _inputs(data.draw, sizes)
    ops["C"] = sp.random(sizes[0], sizes[2], density=0.3, format="csr", random_state=sizes[3])
    before = ops["C"].copy()
    formats = {n: f for n, f in {**INPUT_FORMATS, **fmts, "C": c_format}.items() if f"{n}[" in text}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TranspositionWarning)
        k = spcomp.compile(text, formats=formats, outputs=outputs)
    assert k.launches == 1, k.loops
    used = {n: v for n, v in ops.items() if n in k.inputs or n == "C"}
    env = {n: densify(v) for n, v in used.items()}
    for name, ref in refs:
        env[name] = ref(env)
    want_c = env["C"] + (env[last] * 2 if scale == "* 2" else env[last] + env["D"])
    for threads in (1, 2):
        with spcomp_threads(threads, min_work=0):
            got = k(**used)
        got = got if isinstance(got, dict) else {"C": got}
        assert np.allclose(densify(got["C"]), want_c, rtol=1e-10, atol=1e-10), (text, threads)
        if "y" in outputs:
            assert np.allclose(got["y"], want_c @ env["c"], rtol=1e-10, atol=1e-10), (text, threads)
        if threads == 1 or k.segments[0][1].chunks(32) is not None:
            assert k.last_launches == 1
        else:   # no chunked function (a dcsr or coo tensor): a big enough call runs kernels of their own
            assert k.last_launches in (1, len(k.program.statements))
    assert abs(ops["C"] - before).sum() == 0


def test_a_call_big_enough_for_threads_runs_the_statements_as_kernels():
    """A fused run that cannot run by chunks of rows (its last statement reads z, a
    sum over all of T's rows) stays on one thread; where its first statement alone
    would split a call over threads, the call runs as one call on a thread team
    (runtime/program_team.py), or, without one, the statements as kernels of their own."""
    k = spcomp.compile("T[i,k] = A[i,j]*B[j,k]\nz[k] = T[i,k]*c[i]\ny[i] = T[i,k]*z[k]",
                       formats={"A": "csr", "B": "csr", "T": "csr"}, outputs=["y"])
    assert "a call whose first statement would split over threads runs as one native call on a thread team" \
        in k.loops, k.loops
    ops = chain_operands()
    del ops["D"]
    T = ops["A"] @ ops["B"]
    want = T @ (T.T @ ops["c"])
    with spcomp_threads(1):
        assert np.allclose(k(**ops), want) and k.last_launches == 1
    with spcomp_threads(2, min_work=0):
        assert np.allclose(k(**ops), want) and k.last_launches == 1
        (_kind, seg, run), = k.segments
        team = k._phased.pop(("team",) + tuple(run))
        k._phased[("team",) + tuple(run)] = ([], "no team")  # the per-statement path, as without libgomp
        assert np.allclose(k(**ops), want) and k.last_launches == 3
        k._phased[("team",) + tuple(run)] = team
    with spcomp_threads(2, min_work=10 ** 12):   # too little work to split: fused
        assert np.allclose(k(**ops), want) and k.last_launches == 1


def test_an_unreturned_csr_temporary_gets_its_row_ends_from_the_function(monkeypatch):
    """T's and U's ``pos`` are allocated (zeroed) inside the fused function and freed
    there, like their grown arrays; the runtime allocates no ``n + 1`` array for them.
    A returned csr tensor keeps the runtime's ``pos`` (it is handed back)."""
    from spcomp.runtime import outputs as runtime_outputs
    k = _spgemm_chain()
    one_thread = k.ir.split("int32_t kernel_chunks(")[0]   # (the chunks share the runtime's pos)
    assert "T2_pos = (int32_t*)calloc((N_i + 1), sizeof(int32_t));" in one_thread
    assert "restrict T2_pos_out" in one_thread and "restrict T2_pos," not in one_thread
    shapes, real = [], np.zeros

    def spy(shape, *a, **kw):
        shapes.append(shape)
        return real(shape, *a, **kw)
    monkeypatch.setattr(runtime_outputs.np, "zeros", spy)
    ops = chain_operands()
    with spcomp_threads(1):
        assert np.allclose(k(**ops), _want(ops))
    assert 31 not in shapes and (31,) not in shapes, shapes
    returned = _spgemm_chain()
    k2 = spcomp.compile(returned.expression, formats={n: "csr" for n in "ABDTU"}, outputs=["T", "y"])
    assert "restrict T2_pos," in k2.ir.split("int32_t kernel_chunks(")[0]
    got = k2(**ops)
    assert np.allclose(got["T"].to_numpy(), (ops["A"] @ ops["B"]).toarray())
