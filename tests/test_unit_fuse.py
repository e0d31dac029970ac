"""lower/fuse.py on its own: statements' functions joined into one, renamed apart,
a temporary shared as one parameter, loops joined only where asked and possible."""
from __future__ import annotations

from spcomp.frontend import to_notation
from spcomp.ir import nodes as n
from spcomp.ir.verify import verify_module
from spcomp.lower.fuse import fuse
from spcomp.lower.lowerer import lower
from spcomp.lower.record import Options


def _lowered(*texts):
    opts = Options(parallel=None, auto_layout=False)
    return [lower(to_notation(t, formats={"A": "csr"} if "A[" in t else None), opts) for t in texts]


def test_fused_function_shares_the_temporary_and_renames_apart():
    lows = _lowered("t[i] = A[i,j] * x[j]", "y[i] = t[i] * x[i]")
    fn, sources, merged = fuse([l.entry_function for l in lows], [l.code.bindings for l in lows],
                               [{}, {"t": 0}], docs=["first", "second"])
    names = [p.name for p in fn.params]
    assert len(names) == len(set(names))                       # renamed apart
    assert names.count("t_vals") == 1                          # one parameter for the temporary
    assert "x_vals" in names and "x_vals_2" in names           # each statement's own x
    assert len(sources) == len(fn.params)
    assert {s.statement for s in sources} == {0, 1}
    # the reader's t parameter is gone: statement 1 has no parameter for it
    second = [s.position for s in sources if s.statement == 1]
    reader = [k for k, b in enumerate(lows[1].code.bindings) if b.role == "input" and b.storage == "t"]
    assert reader and reader[0] not in second
    assert merged == [False, False]
    verify_module(n.Module((fn,), fn.name))
    assert isinstance(fn.body.body[-1], n.Return)
    assert sum(isinstance(s, n.Return) and s.status == n.STATUS_OK for s in n.walk(fn.body)) == 1


def test_loops_join_where_asked():
    lows = _lowered("t[i] = x[i] * 2", "y[i] = t[i] + x[i]")
    fns, binds = [l.entry_function for l in lows], [l.code.bindings for l in lows]
    fn, _, merged = fuse(fns, binds, [{}, {"t": 0}], share_loop=[None, "i"])
    assert merged == [False, True]
    loops = [x for x in n.walk(fn.body) if isinstance(x, n.For)]
    assert len(loops) == 1
    verify_module(n.Module((fn,), fn.name))
    fn2, _, merged2 = fuse(fns, binds, [{}, {"t": 0}])
    assert merged2 == [False, False]
    assert len([x for x in n.walk(fn2.body) if isinstance(x, n.For)]) == 2
