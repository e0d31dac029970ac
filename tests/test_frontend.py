"""The frontend: text -> AST -> checked index notation (DESIGN §4)."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spcomp import Format
from spcomp import notation as nt
from spcomp.errors import (DTypeError, FormatError, NotationError, ParseError, SpcompError,
                           UnknownFunctionError)
from spcomp.frontend import ast, check, parse, to_notation, unparse
from spcomp.grammar import GRAMMAR_PATH, grammar_text


def notation(text, **kw) -> str:
    return repr(to_notation(text, **kw))


# ------------------------------------------------------------------ grammar

def test_grammar_is_shipped_as_data():
    assert GRAMMAR_PATH.name == "spcomp.lark" and GRAMMAR_PATH.exists()
    assert "statement" in grammar_text()


# ------------------------------------------------------------------ parsing

def test_parse_builds_positioned_nodes():
    s = parse("y[i] = A[i,j] * x[j]")
    assert s == ast.Statement(ast.Access("y", (ast.Index("i"),)),
                              ast.BinOp("*", ast.Access("A", (ast.Index("i"), ast.Index("j"))),
                                        ast.Access("x", (ast.Index("j"),))))
    assert repr(s) == "y[i] = A[i,j] * x[j]"
    assert (s.rhs.line, s.rhs.column) == (1, 8)
    assert s.rhs.rhs.column == 17 and s.rhs.lhs.indices[1].column == 12
    assert not s.accumulate and s.text == "y[i] = A[i,j] * x[j]"


def test_positions_on_later_lines():
    s = parse("y[i] =\n   A[i,j]\n * -x[j]")
    assert (s.rhs.rhs.line, s.rhs.rhs.column) == (3, 4)
    assert (s.rhs.lhs.line, s.rhs.lhs.column) == (2, 4)


def test_precedence_and_associativity():
    s = parse("y[i] = a - b - c * d / e + -f * g")
    # ((a - b) - ((c * d) / e)) + ((-f) * g)
    add = s.rhs
    assert add.op == "+" and add.lhs.op == "-" and add.lhs.lhs.op == "-"
    assert add.lhs.rhs.op == "/" and add.lhs.rhs.lhs.op == "*"
    assert add.rhs.op == "*" and isinstance(add.rhs.lhs, ast.Neg)
    assert repr(parse("y = a - (b - c)")) == "y = a - (b - c)"
    assert repr(parse("y = (a - b) - c")) == "y = a - b - c"
    assert repr(parse("y = a * (b * c)")) == "y = a * (b * c)"
    assert repr(parse("y = -(a + b) * --c")) == "y = -(a + b) * --c"
    assert parse("y = (((a)))") == parse("y = a")


@pytest.mark.parametrize("text,value", [("2", 2.0), ("0.5", 0.5), ("1e-3", 1e-3), (".5", 0.5),
                                        ("3.", 3.0), ("2.5E+2", 250.0), ("10", 10.0), ("1.5e3", 1500.0)])
def test_literals(text, value):
    s = parse(f"y[i] = {text} * x[i]")
    assert s.rhs.lhs == ast.Number(text) and s.rhs.lhs.value == value
    assert to_notation(f"y[i] = {text} * x[i]").rhs.lhs == nt.Literal(value)


def test_whitespace_is_free():
    assert parse("y[ i ]=A[i , j]*x[j]") == parse("y[i] = A[i,j] * x[j]")
    assert parse("\n  y[i]\t+=\n A[i,j] *x[j]  \n") == parse("y[i] += A[i,j]*x[j]")


# --------------------------------------------------------------- notation

def test_spmv():
    a = to_notation("y[i] = A[i,j] * x[j]", formats={"A": "csr"})
    assert repr(a) == "y[i] = sum(j, A[i,j] * x[j])"
    y, A, x = a.tensors.values()
    assert (y.order, A.order, x.order) == (1, 2, 1)
    assert A.format == Format.csr() and x.format == Format.dense(1) and y.format == Format.dense(1)
    i, j = nt.IndexVar("i"), nt.IndexVar("j")
    assert a == nt.Assignment(nt.Access(y, (i,)),
                              nt.Sum(j, nt.Mul(nt.Access(A, (i, j)), nt.Access(x, (j,)))))


def test_spmm_and_sddmm():
    assert notation("C[i,j] = A[i,k] * B[k,j]", formats={"A": "csr"}) == "C[i,j] = sum(k, A[i,k] * B[k,j])"
    assert (notation("A[i,j] = B[i,j] * C[i,k] * D[k,j]", formats={"A": "csr", "B": "csr"})
            == "A[i,j] = sum(k, B[i,j] * C[i,k] * D[k,j])")


def test_mttkrp_sums_sit_on_the_lowest_common_ancestor():
    # (B*C)*D: j lives in B and C only, k in B and D
    assert (notation("A[i,l] = B[i,j,k] * C[j,l] * D[k,l]", formats={"B": "csf"})
            == "A[i,l] = sum(k, sum(j, B[i,j,k] * C[j,l]) * D[k,l])")
    assert (notation("A[i,l] = B[i,j,k] * (C[j,l] * D[k,l])")
            == "A[i,l] = sum(j, sum(k, B[i,j,k] * (C[j,l] * D[k,l])))")


@pytest.mark.parametrize("text,expected", [
    ("a[i] = b[i] + C[j,i]", "a[i] = (b[i] + sum(j, C[j,i]))"),
    ("y[i] = A[i,j]*x[j]", "y[i] = sum(j, A[i,j] * x[j])"),
    ("a[i] = relu(B[i,k]*c[k]) + d[i]", "a[i] = (relu(sum(k, B[i,k] * c[k])) + d[i])"),
    ("s = a[i]*b[i] + c[j]", "s = (sum(i, a[i] * b[i]) + sum(j, c[j]))"),
    ("y[i] = A[i,j]*(B[j,k]*c[k])", "y[i] = sum(j, A[i,j] * sum(k, B[j,k] * c[k]))"),
    ("y[i] = A[i,j,k] * B[k,j]", "y[i] = sum(j, sum(k, A[i,j,k] * B[k,j]))"),
    ("y[i] = A[i,k,j] * B[k,j]", "y[i] = sum(k, sum(j, A[i,k,j] * B[k,j]))"),
    ("s = A[i,i]", "s = sum(i, A[i,i])"),
    ("y[i] = -A[i,j]", "y[i] = -sum(j, A[i,j])"),
    ("y[i] = exp(-A[i,j] * x[j]) / 2", "y[i] = exp(sum(j, -A[i,j] * x[j])) / 2"),
])
def test_sum_placement(text, expected):
    assert notation(text) == expected


def test_transposed_output_and_broadcast():
    assert notation("A[j,i] = B[i,j]") == "A[j,i] = B[i,j]"
    a = to_notation("A[i,j] = b[i]")  # j only on the left: broadcast
    assert repr(a) == "A[i,j] = b[i]" and a.lhs.tensor.order == 2


def test_scalars_and_order0_output():
    a = to_notation("s = alpha * a[i] * b[i] + beta", dtypes={"s": "float32"})
    assert repr(a) == "s = (sum(i, alpha * a[i] * b[i]) + beta)"
    t = a.tensors
    assert t["s"].order == 0 and t["s"].format == Format(()) and t["s"].dtype == "float32"
    assert t["alpha"].order == 0 and t["beta"].format == Format(())
    assert a.lhs == nt.Access(t["s"], ())


def test_unary_minus_and_nested_functions():
    assert notation("y[i] = -x[i]") == "y[i] = -x[i]"
    assert notation("y[i] = - -x[i]") == "y[i] = --x[i]"
    assert (notation("y[i] = max(relu(x[i]), -min(sqrt(abs(x[i])), 0.5))")
            == "y[i] = max(relu(x[i]), -min(sqrt(abs(x[i])), 0.5))")
    for f in ("gelu", "silu", "tanh", "exp", "log"):
        assert notation(f"y[i] = {f}(x[i])") == f"y[i] = {f}(x[i])"


def test_accumulate():
    a = to_notation("y[i] += A[i,j] * x[j]")
    assert a.accumulate and repr(a) == "y[i] += sum(j, A[i,j] * x[j])"
    assert notation("s += 3") == "s += 3"


def test_order4_tensors():
    a = to_notation("Y[a,b,c,d] = X[a,b,c,e] * W[e,d] + Z[a,b,c,d]",
                    formats={"X": "dddc", "Z": Format.csf(4)})
    assert repr(a) == "Y[a,b,c,d] = (sum(e, X[a,b,c,e] * W[e,d]) + Z[a,b,c,d])"
    t = a.tensors
    assert t["Y"].format == Format.dense(4) and t["X"].format == Format.parse("dddc")
    assert t["Z"].format == Format.csf(4)


def test_one_tensorvar_per_name():
    a = to_notation("y[i] = A[i,j] * x[j] + A[i,k] * x[k]")
    accesses = nt.accesses(a.rhs)
    assert accesses[0].tensor is accesses[2].tensor
    assert accesses[1].tensor is accesses[3].tensor
    assert a.lhs.tensor is a.tensors["y"]


def test_formats_and_dtypes():
    a = to_notation("y[i] = W[i,j] * x[j]", formats={"W": "csc"},
                    dtypes={"W": ml_dtypes.bfloat16, "x": np.float32, "y": np.dtype("float32")},
                    default_dtype="float64")
    t = a.tensors
    assert t["W"].format == Format.csc() and t["W"].dtype == "bfloat16"
    assert (t["x"].dtype, t["y"].dtype) == ("float32", "float32")
    assert to_notation("y[i] = x[i]", default_dtype=np.float32).tensors["x"].dtype == "float32"
    assert to_notation("y[i] = x[i]", formats={"x": Format.parse("c")}).tensors["x"].format == Format.parse("c")


def test_unparse_drops_sums_and_reads_back():
    a = to_notation("a[i] = relu(B[i,k] * c[k]) + d[i] * 1e-3")
    assert unparse(a) == "a[i] = relu(B[i,k] * c[k]) + d[i] * 0.001"
    assert to_notation(unparse(a)) == a
    assert unparse(to_notation("y = a * (b * c) - (d - e)")) == "y = a * (b * c) - (d - e)"


# ------------------------------------------------------------------ errors

def parse_error(text) -> ParseError:
    with pytest.raises(ParseError) as info:
        to_notation(text)
    return info.value


def test_parse_error_names_token_and_column():
    e = parse_error("y[i] = A[i,)")
    assert "unexpected ')'" in str(e) and "expected an index name" in str(e)
    assert (e.line, e.column) == (1, 12)
    assert str(e).splitlines()[-1] == "  " + " " * 11 + "^"


@pytest.mark.parametrize("text,found,column", [
    ("y[] = a", "unexpected ']'", 3),                      # empty index list
    ("y[i] = A[]", "unexpected ']'", 10),
    ("y[i] = ", "unexpected end of input", 7),
    ("y[i] = a b", "unexpected name 'b'", 10),
    ("y[i] = a @ b", "unexpected character '@'", 10),
    ("y[i] == a", "unexpected '='", 7),
    ("y[i] = (a", "unexpected end of input", 10),
    ("y[i] = a[i]]", "unexpected ']'", 12),
    ("2 = a[i]", "unexpected number '2'", 1),              # literal on the left
    ("relu(y[i]) = a[i]", "unexpected '('", 5),           # function on the left
    ("-y[i] = a[i]", "unexpected '-'", 1),
    ("y[i] = a[i]; z = 1", "unexpected character ';'", 12),
])
def test_parse_errors(text, found, column):
    e = parse_error(text)
    assert found in str(e) and e.column == column and e.text == text


def test_parse_error_words():
    assert "expected the output tensor's name" in str(parse_error("2 = a"))
    assert "expected '[', '=' or '+='" in str(parse_error("relu(y[i]) = a"))
    assert "expected an operand" in str(parse_error("y[i] = "))
    assert "expected ',' or ']'" in str(parse_error("y[i] = A[i"))
    assert "an operator (+ - * /)" in str(parse_error("y[i] = a b"))
    e = parse_error("y[i] =\n  a +\n  * b")
    assert (e.line, e.column) == (3, 3) and "unexpected '*'" in str(e)
    assert "empty expression" in str(parse_error("  \n "))


def test_parse_rejects_non_text():
    with pytest.raises(ParseError, match="not int"):
        parse(42)


def notation_error(cls, text, **kw) -> str:
    with pytest.raises(cls) as info:
        to_notation(text, **kw)
    return str(info.value)


def test_unknown_function():
    msg = notation_error(UnknownFunctionError, "y[i] = foo(x[i])")
    assert "'foo'" in msg and "relu" in msg and "max" in msg and "column 8" in msg
    assert "implicit" in notation_error(UnknownFunctionError, "y[i] = sum(A[i,j])")


@pytest.mark.parametrize("text", ["y[i] = max(x[i])", "y[i] = relu(x[i], 1)", "y[i] = exp()"])
def test_wrong_arity(text):
    msg = notation_error(NotationError, text)
    assert text.split("= ")[1].split("(")[0] in msg and "argument" in msg


def test_tensor_with_two_orders():
    msg = notation_error(NotationError, "y[i] = A[i,j] * x[j] + A[i]")
    assert "'A'" in msg and "2 indices" in msg and "1 index" in msg and "column 24" in msg


def test_output_on_right_side():
    msg = notation_error(NotationError, "y[i] = y[i] + x[i]")
    assert "output 'y' also appears on the right side" in msg
    notation_error(NotationError, "s += s * 2")


def test_repeated_output_index():
    msg = notation_error(NotationError, "A[i,i] = B[i,j]")
    assert "index 'i'" in msg and "A[i,i]" in msg and "column 5" in msg


def test_name_both_tensor_and_index():
    assert "'i'" in notation_error(NotationError, "y[i] = i * x[i]")


def test_infinite_literal():
    assert "'1e999'" in notation_error(NotationError, "y[i] = x[i] * 1e999")


def test_bad_format():
    msg = notation_error(FormatError, "y[i] = W[i,j] * x[j]", formats={"W": "dcc"})
    assert msg.startswith("tensor 'W': ") and "3 level" in msg
    msg = notation_error(FormatError, "y[i] = W[i,j] * x[j]", formats={"x": "csr"})
    assert msg.startswith("tensor 'x': ")
    assert notation_error(FormatError, "y = W[i,j]", formats={"W": "nonsense"}).startswith("tensor 'W'")
    assert notation_error(FormatError, "y = W[i,j]", formats={"W": 3}).startswith("tensor 'W'")


@pytest.mark.parametrize("what", ["formats", "dtypes"])
def test_unknown_names_in_formats_and_dtypes(what):
    value = "csr" if what == "formats" else "float32"
    msg = notation_error(NotationError, "y[i] = W[i,j] * x[j]", **{what: {"V": value}})
    assert "'V'" in msg and "y, W, x" in msg and what in msg


@pytest.mark.parametrize("dtype", ["int32", np.int8, "float16", None, "nonsense", True])
def test_bad_dtype(dtype):
    msg = notation_error(DTypeError, "y[i] = x[i]", dtypes={"x": dtype})
    assert "tensor 'x'" in msg and "float32, float64, bfloat16" in msg


def test_bad_default_dtype():
    assert "default_dtype" in notation_error(DTypeError, "y[i] = x[i]", default_dtype="int64")


def test_check_takes_a_statement():
    with pytest.raises(TypeError):
        check("y[i] = x[i]")


# ------------------------------------------------------- property tests

TENSORS = {"A": 2, "B": 2, "T": 3, "Q": 4, "x": 1, "v": 1, "s": 0, "t": 0}
INDICES = ["i", "j", "k", "l"]
NUMBERS = ["0", "2", "17", "0.5", ".25", "3.", "1e-3", "2.5E+2", "6e1"]
WS = st.sampled_from(["", " ", " ", "  ", "\n ", "\t"])


@st.composite
def operands(draw):
    name = draw(st.sampled_from(sorted(TENSORS)))
    order = TENSORS[name]
    if order == 0:
        return name
    idx = draw(st.lists(st.sampled_from(INDICES), min_size=order, max_size=order))
    w = draw(WS)
    return f"{name}{w}[{w}{(',' + w).join(idx)}]"


@st.composite
def expressions(draw, depth=3):
    kind = draw(st.sampled_from(["leaf", "number"] + (["bin", "bin", "neg", "call", "paren"] if depth else [])))
    if kind == "leaf":
        return draw(operands())
    if kind == "number":
        return draw(st.sampled_from(NUMBERS))
    w1, w2 = draw(WS), draw(WS)
    sub = expressions(depth - 1)
    if kind == "bin":
        return f"{draw(sub)}{w1}{draw(st.sampled_from('+-*/'))}{w2}{draw(sub)}"
    if kind == "neg":
        return f"-{w1}{draw(sub)}"
    if kind == "paren":
        return f"({w1}{draw(sub)}{w2})"
    func = draw(st.sampled_from(sorted(nt.FUNCTIONS)))
    args = [draw(sub) for _ in range(nt.FUNCTIONS[func].arity)]
    return f"{func}{w1}({w2}{(',' + w1).join(args)})"


@st.composite
def statements(draw):
    out = draw(st.lists(st.sampled_from(INDICES), unique=True, max_size=3))
    lhs = f"y[{','.join(out)}]" if out else "y"
    return f"{draw(WS)}{lhs}{draw(WS)}{draw(st.sampled_from(['=', '+=']))}{draw(WS)}{draw(expressions())}"


def _uses(e, index) -> bool:
    return index in {i for a in nt.accesses(e) for i in a.indices}


def _check_sums(e, kept: set, seen: list):
    if isinstance(e, nt.Sum):
        assert e.index not in kept and e.index not in seen
        seen.append(e.index)
        body = e.body
        while isinstance(body, nt.Sum):
            body = body.body
        # minimal: the body is an access that uses the index, or at least two of its
        # children use it (else the sum would belong on the one child that does)
        if isinstance(body, nt.Access):
            assert e.index in body.indices
        else:
            assert sum(_uses(c, e.index) for c in nt.children(body)) >= 2, e
    for c in nt.children(e):
        _check_sums(c, kept, seen)


@settings(max_examples=300, deadline=None)
@given(statements())
def test_random_statements_round_trip(text):
    stmt = parse(text)
    printed = repr(stmt)
    assert parse(printed) == stmt and repr(parse(printed)) == printed

    a = check(stmt)
    assert to_notation(unparse(a)) == a
    kept = set(a.lhs.indices)
    assert nt.free_indices(a.rhs) <= kept
    seen: list = []
    _check_sums(a.rhs, kept, seen)
    used = {i for acc in nt.accesses(a.rhs) for i in acc.indices}
    assert set(seen) == used - kept  # every other index is summed, exactly once


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="yAx[]ij,()+-*/=.0123e relu@;\n", max_size=25))
def test_garbage_raises_only_spcomp_errors(text):
    try:
        to_notation(text)
    except SpcompError:
        pass
