"""Random programs (several statements) and their NumPy reference.

:func:`programs` draws a program of 1 to ``max_statements`` statements over a
fixed pool of index names (so every statement agrees on each index's size):
each statement writes a new tensor ``T1``, ``T2`` ... from the inputs and the
tensors earlier statements wrote, temporaries get random formats (dense or
sparse), and the last written tensor is always returned (others sometimes).
With ``accumulate`` some statements are ``+=`` into a dense output the caller
passes (:func:`program_operands` draws its old value).
:func:`reference_program` runs a checked program statement by statement with
:func:`~spcomp.testing.reference` in float64. :func:`products` draws one
statement multiplying three or four operands (the contraction-order tests).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from hypothesis import strategies as st

from .check import densify
from .reference import reference
from .strategies import formats as input_formats
from .strategies import output_formats, tensors

INDEX_POOL = ("i", "j", "k", "l")
_FUNCS = ("relu", "abs", "-")


@dataclass(frozen=True)
class ProgramCase:
    """A generated program: its text, formats (inputs and temporaries), the input
    tensors' indices (name -> index names), index sizes and the outputs it returns."""
    text: str
    formats: dict = field(hash=False)
    inputs: dict = field(hash=False)
    sizes: dict = field(hash=False)
    outputs: tuple = ()
    accumulated: dict = field(default_factory=dict, hash=False)  # += output -> its indices

    def __str__(self) -> str:
        return f"{self.text!r} formats={self.formats} outputs={self.outputs}"


def _access(name, idx) -> str:
    return name + (f"[{','.join(idx)}]" if idx else "")


@st.composite
def programs(draw, max_statements: int = 4, max_order: int = 2, sparse_temporaries: bool = True,
             transposed_reads: bool = False, input_kinds: str = "dc", accumulate: bool = False):
    """A :class:`ProgramCase` of 1 to ``max_statements`` statements; the inputs' levels
    are of ``input_kinds`` (``"cq"``: sparse inputs only, coo among them). With
    ``transposed_reads`` every written tensor of order 2 or more draws a format (dense
    among them), and a statement that reads the one just written often writes its
    indices in another order (``Z[k,i] = T[i,k]``): a transposed read. With
    ``accumulate`` some statements are ``+=`` (those are dense outputs)."""
    sizes = {i: draw(st.integers(1, 5)) for i in INDEX_POOL}
    avail: dict = {}   # name -> index tuple, inputs and written tensors
    inputs: dict = {}
    fmts: dict = {}
    n_inputs = draw(st.integers(2, 4))
    for k in range(n_inputs):
        order = draw(st.integers(1, max_order))
        idx = tuple(draw(st.permutations(INDEX_POOL)))[:order]
        name = "ABCD"[k]
        avail[name] = inputs[name] = idx
        fmts[name] = draw(input_formats(order, kinds=input_kinds, allow_packed=False))
    texts, written, accumulated = [], [], {}
    for s in range(draw(st.integers(1, max_statements))):
        names = list(avail)
        used = draw(st.lists(st.sampled_from(names), min_size=1, max_size=3))
        if written and written[-1] not in used and draw(st.booleans()):
            used.append(written[-1])  # chains: read the tensor just written
        terms = [_access(u, avail[u]) for u in used]
        op = draw(st.sampled_from(["*", "*", "+"]))
        rhs = f" {op} ".join(terms)
        func = draw(st.sampled_from(_FUNCS + ("",) * 3))
        rhs = f"-({rhs})" if func == "-" else f"{func}({rhs})" if func else rhs
        indices = list(dict.fromkeys(i for u in used for i in avail[u]))
        order = draw(st.integers(0, min(max_order, len(indices))))
        lhs_idx = tuple(draw(st.permutations(indices)))[:order] if order else ()
        prev = avail[written[-1]] if written and written[-1] in used else ()
        if transposed_reads and len(prev) >= 2 and draw(st.booleans()):
            lhs_idx = tuple(draw(st.permutations(prev).filter(lambda p: p != prev)))
        name = f"T{s + 1}"
        adds = accumulate and draw(st.booleans())
        texts.append(f"{_access(name, lhs_idx)} {'+=' if adds else '='} {rhs}")
        if adds:
            accumulated[name] = lhs_idx
        elif len(lhs_idx) and sparse_temporaries and (transposed_reads or draw(st.booleans())):
            fmts[name] = draw(output_formats(len(lhs_idx), allow_packed=False))
        avail[name] = lhs_idx
        written.append(name)
    read = {u for t in texts for u in _names(t.split("=", 1)[1])}
    inputs = {n: idx for n, idx in inputs.items() if n in read}
    fmts = {n: f for n, f in fmts.items() if n in read or n in written}
    outs = tuple(n for n in written[:-1] if n in accumulated or draw(st.booleans())) + (written[-1],)
    sep = draw(st.sampled_from(["; ", "\n"]))
    return ProgramCase(sep.join(texts), fmts, inputs, sizes, outs, accumulated)


def _names(text: str) -> set:
    import re
    return set(re.findall(r"[A-Z][A-Za-z0-9]*", text))


@st.composite
def program_operands(draw, case: ProgramCase):
    """Operands for a :class:`ProgramCase`: name -> ``(dense float64, operand)``; a
    ``+=`` output's operand is its own copy (the program updates it in place), a
    Python float for an order-0 one."""
    out = {}
    for name, idx in case.inputs.items():
        shape = tuple(case.sizes[i] for i in idx)
        out[name] = draw(tensors(shape, case.formats.get(name, "dense")))
    for name, idx in case.accumulated.items():
        dense, _tensor = draw(tensors(tuple(case.sizes[i] for i in idx), "dense"))
        out[name] = (dense, dense.copy() if idx else float(dense))
    return out


def reference_program(program, operands: dict) -> dict:
    """Every written tensor of a checked program (``spcomp.frontend.program.Program``,
    ``k.program``), evaluated statement by statement in float64: name -> array."""
    env = {n: densify(v) for n, v in operands.items()}
    out = {}
    for a in program.statements:
        name = a.lhs.tensor.name
        env[name] = out[name] = reference(a, env, out=env.get(name) if a.accumulate else None)
    return out


@st.composite
def products(draw, operands: int | None = None, sparse_output: bool = False):
    """``(text, formats, shapes)``: one statement multiplying 3 or 4 operands of order
    1 or 2 over a chain of indices (``y[i] = A[i,j]*B[j,k]*c[k]`` and its kin); with
    ``sparse_output`` the output ``Y`` is sometimes stored sparse (any format the
    compiler assembles, packed ones aside)."""
    count = operands or draw(st.integers(3, 4))
    chain = list("ijklm"[:count + 1])
    sizes = {i: draw(st.integers(1, 6)) for i in chain}
    factors, fmts, shapes = [], {}, {}
    for f in range(count):
        name = "ABCD"[f]
        idx = (chain[f], chain[f + 1])
        if f == count - 1 and draw(st.booleans()):
            idx = (chain[f],)
        factors.append(_access(name, idx))
        fmts[name] = draw(input_formats(len(idx), kinds="dc", allow_packed=False))
        shapes[name] = tuple(sizes[i] for i in idx)
    keep = draw(st.sampled_from([[chain[0]], [], [chain[0], chain[-1]]]))
    used = {i for x in factors for i in x[2:-1].split(",")}
    keep = [i for i in keep if i in used]
    if sparse_output and keep and draw(st.booleans()):
        fmts["Y"] = draw(output_formats(len(keep), allow_packed=False, allow_dense=False))
    return f"{_access('Y', tuple(keep))} = {' * '.join(factors)}", fmts, shapes


def close(got, want, tol=1e-9) -> bool:
    """Whether a result (array, Tensor or float) matches a float64 reference."""
    g = densify(got) if not np.isscalar(got) else np.float64(got)
    return np.allclose(np.asarray(g, dtype=np.float64), want, rtol=tol, atol=tol, equal_nan=True)
