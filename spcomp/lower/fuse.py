"""Several lowered statements as one kernel function: consecutive loop nests, one launch.

A program's statements are lowered one by one (each with its own loop order,
sinks and passes); :func:`fuse` then joins their functions into one. Each
statement's variables are renamed apart (the first statement keeps its names,
later ones get ``_2``, ``_3`` ... where a name is taken), its body runs in its
own block in program order, and a temporary that one statement writes and a
later one reads becomes a single parameter: the reader's input array *is* the
writer's output array, so the reader sees the values just stored, and no two
parameters of the function alias (the backends mark pointers ``noalias``).

A sparse temporary's arrays that its writer grows itself (``malloc``/``realloc``,
published through a pointer-to-pointer parameter, the slot) are read by a later
statement from that slot: its block starts by loading each pointer. Where the
temporary is not returned, the function frees those arrays at its end and
nulls the slots, so no Python runs between the statements or after them; on an
error status the slots still hold what was allocated and the runtime frees it.

A dense temporary only ever touched at the fused row loop's current row becomes a
row workspace (:func:`row_workspace`): one row allocated inside the function (per
thread), so memory does not grow with the number of rows.
"""
from __future__ import annotations

import dataclasses

from ..formats import Compressed, Dense, Singleton
from ..ir import nodes as n
from ..ir.types import I64, Type, ptr
from .context import Names
from .fused_diagonal import DiagonalCopy, DiagonalRead, buildable, diagonal_block, diagonal_storages
from .fused_transpose import SortedCopy, TransposedCopy, free_on_every_exit, sorted_copy_block, transpose_block


@dataclasses.dataclass(frozen=True)
class FusedParam:
    """Where one parameter of the fused function comes from: parameter ``position``
    of statement ``statement``'s own function."""
    statement: int
    position: int


def fuse(functions: list, bindings: list, links: list, name: str = "program", docs=(),
         share_loop=(), frees=(), transposed=(), own_pos=()) -> tuple:
    """``(Function, [FusedParam], merged)``: ``functions[k]`` (statement ``k``'s kernel
    function, its parameters described by ``bindings[k]``) run in order in one
    function. ``links[k]`` maps a storage statement ``k`` reads to the statement
    that writes it earlier in the same function: each array parameter the reader
    has for it is replaced by the writer's output parameter (a dense temporary's
    values, a sparse one's first ``pos``), or by a local loaded from the writer's
    slot (an array the writer grows). ``frees[k]`` names the sparse tensors
    statement ``k`` writes whose grown arrays the function frees at its end.

    ``share_loop[k]``, when given, names the index of statement ``k``'s outer loop
    if the caller has checked that it may run inside statement ``k - 1``'s outer
    loop (same range; every temporary it reads is read at the row that loop is on,
    and was written at that row: see ``spcomp.program``). Where both functions are
    one loop over that index after declarations, the bodies are joined into one
    loop (``merged[k]`` True): the consumer reads each row while it is in cache.

    Functions lowered for chunks of rows (``lo``, ``hi`` parameters, a sparse output
    appended per chunk: ``Options.append_chunks``) share the first one's ``lo`` and
    ``hi``, and the function's ``per_chunk`` parameters are all of theirs: each
    ``[lo, hi)`` call runs every statement over those rows. A reader of a temporary
    appended that way reads its chunk's first row as starting at 0.

    ``transposed[k]``, when given, maps a storage statement ``k`` reads as a
    transposed copy of a sparse temporary (``T_T``) to ``(writer, tensor, the index of
    each of the writer's levels, the writer's level of each of the copy's, whether
    the writer has an unordered level: the copy is then sorted by every level)``, or a
    diagonal storage of one (``T_diag``), or a temporary its writer assembled in a
    stand-in (read laid out in its declared levels), to its :class:`.fused_diagonal.DiagonalRead`:
    the copy is made at the top of the reader's block from the writer's arrays
    (:mod:`.fused_transpose`, :mod:`.fused_diagonal`) and freed after it.

    ``own_pos[k]``, when given, maps a csr tensor statement ``k`` writes to the
    index of its rows: its row-end ``pos`` (else an array the runtime allocates) is
    allocated by the function (zeroed, rows + 1 entries) and published through a
    slot parameter in its place, like the arrays the writer grows (readers load it
    from the slot, ``frees`` frees it)."""
    names = Names()
    renamed: list = []      # per statement: old name -> new Var
    outputs: list = []      # per statement: (tensor, level, array) -> (its Var after renaming, role)
    bounds: dict = {}       # "lo"/"hi" -> the first statement's Var: every statement runs those rows
    params, sources, body = [], [], []
    merged = [False] * len(functions)
    sizes: set = set()      # names of the size parameters (N_i ...), after renaming
    size_vars: list = []    # per statement: index -> its size parameter, after renaming
    for k, fn in enumerate(functions):
        mapping: dict = {}
        shared, slots, chunk_pos = {}, {}, set()
        copies = transposed[k] if k < len(transposed) else {}
        copied = {b.var.name for b in bindings[k] if b.role == "input" and b.storage in copies}
        for b in bindings[k]:
            if b.role in ("lo", "hi") and b.role in bounds:
                shared[b.var.name] = bounds[b.role]
            elif b.role == "input" and b.storage in links[k] and b.storage not in copies:
                var, role = outputs[links[k][b.storage]][(b.storage, b.level, b.array)]
                if role == "output":
                    shared[b.var.name] = var
                    if b.array == "pos" and "lo" in bounds:
                        chunk_pos.add(var)
                else:  # a grown array: read its pointer from the writer's slot
                    slots[b.var.name] = var
        for var in _variables(fn):
            if var.name in mapping:
                continue
            mapping[var.name] = shared.get(var.name) or n.Var(names(var.name), var.type)
        renamed.append(mapping)
        loads: list = []
        for b in bindings[k]:
            if b.role in ("lo", "hi"):
                bounds.setdefault(b.role, mapping[b.var.name])
        outs = {}
        owned = own_pos[k] if k < len(own_pos) else {}
        size = {b.index: mapping[b.var.name] for b in bindings[k] if b.role == "size"}
        sizes.update(v.name for v in size.values())
        size_vars.append(size)
        for pos, (param, b) in enumerate(zip(fn.params, bindings[k])):
            new = mapping[param.name]
            if b.role == "output" and (b.level, b.array) == (1, "pos") and b.tensor in owned:
                slot = n.Var(names(f"{new.name}_out"), ptr(new.type))
                loads += [n.Comment(f"{new.name}: {b.tensor}'s row ends, allocated here, published in {slot.name}"),
                          n.Allocate(new, n.Binary("+", size[owned[b.tensor]], n.i64(1)), zero=True),
                          n.Store(slot, n.i64(0), new)]
                outs[(b.tensor, b.level, b.array)] = (slot, "output_grow")
                params.append(slot)
                sources.append(FusedParam(k, pos))
                continue
            if b.role in ("output", "output_grow"):
                outs[(b.tensor, b.level, b.array)] = (new, b.role)
            if param.name in shared or param.name in slots or param.name in copied:
                continue
            params.append(new)
            sources.append(FusedParam(k, pos))
        outputs.append(outs)
        stmts = list(fn.body.body)
        if stmts and isinstance(stmts[-1], n.Return) and stmts[-1].status == n.STATUS_OK:
            stmts.pop()
        note = [n.Comment(f"statement {k + 1}: {docs[k]}")] if k < len(docs) else []
        loads += [n.Declare(mapping[old], n.Load(slot, n.i64(0))) for old, slot in slots.items()]
        stmts = [_rename(s, mapping) for s in stmts]
        if chunk_pos:
            stmts = [_chunk_starts(s, chunk_pos, bounds["lo"]) for s in stmts]
        made = []
        for storage, spec in copies.items():
            if isinstance(spec, DiagonalRead):
                copy, prologue = _diagonal_copy(storage, bindings[k], mapping, outputs[spec.writer], spec,
                                                size_vars[spec.writer], names)
                loads += prologue + diagonal_block(copy, names)
                made += copy.arrays
                continue
            writer, tensor, levels, key, unordered = spec
            copy, prologue = _transposed_copy(storage, bindings[k], mapping, outputs[writer], tensor, levels, key,
                                              unordered, names)
            loads += prologue + (transpose_block(copy, names) if isinstance(copy, TransposedCopy)
                                 else sorted_copy_block(copy, names))
            made += copy.arrays
        if made:
            stmts = free_on_every_exit(stmts, made) + [n.Free(a) for a in made]
        stmts = note + loads + stmts
        index = share_loop[k] if k < len(share_loop) else None
        if index is not None and body:
            joined = _join_loops(body[-1], stmts, mapping.get(index), sizes)
            if joined is not None:
                body[-1] = joined
                merged[k] = True
                continue
        body.append(n.Block(tuple(stmts)))
    for k, tensors in enumerate(frees):
        for (tensor, _level, _array), (slot, role) in outputs[k].items():
            if tensor in tensors and role == "output_grow":
                body.append(_free_slot(slot, names))
    body.append(n.Return(n.STATUS_OK))
    doc = "\n".join(docs)
    per_chunk = tuple(renamed[k][p].name for k, fn in enumerate(functions) for p in fn.per_chunk)
    return n.Function(name, tuple(params), n.Block(tuple(body)), doc=doc, per_chunk=per_chunk), sources, merged


def _transposed_copy(storage, bindings, mapping, written, tensor, levels, key, unordered, names) -> tuple:
    """``(copy, prologue)``: the reader's arrays of ``storage`` (now locals) made from
    ``tensor``'s arrays as its writer left them (``written``: (tensor, level, array) ->
    (Var, role)); ``levels`` names the index of each of the writer's levels, ``key``
    the writer's level of each of the copy's. A 2-d ``dc`` copy is a
    :class:`TransposedCopy`, any other (a coordinate list) a :class:`SortedCopy`
    (sorted by every level where the writer has an unordered one, ``unordered``).
    The prologue loads the grown arrays from their slots."""
    mine = {(b.level, b.array): mapping[b.var.name] for b in bindings if b.role == "input" and b.storage == storage}
    size = {b.index: mapping[b.var.name] for b in bindings if b.role == "size"}
    source, prologue = _written_arrays(written, tensor, names)
    if (1, "pos") in mine and len(levels) == 2:
        return TransposedCopy(mine[(1, "pos")], mine[(1, "crd")], mine[(-1, "vals")], source,
                              size[levels[0]], size[levels[1]]), prologue
    return SortedCopy(mine, source, [size[i] for i in levels], list(key), unordered), prologue


def _written_arrays(written, tensor, names) -> tuple:
    """``(source, prologue)``: ``tensor``'s arrays as its writer left them (``written``:
    (tensor, level, array) -> (Var, role)) by (level, array), each grown one loaded
    from its slot by the prologue."""
    prologue, source = [], {}
    for (t, level, array), (var, role) in written.items():
        if t != tensor:
            continue
        if role == "output_grow":
            local = n.Var(names(f"{tensor}_{array}{max(level, 0)}_source"), var.type.elem)
            prologue.append(n.Declare(local, n.Load(var, n.i64(0))))
            var = local
        source[(level, array)] = var
    return source, prologue


def _diagonal_copy(storage, bindings, mapping, written, read, writer_sizes, names) -> tuple:
    """``(copy, prologue)``: the reader's arrays of diagonal storage ``storage`` (now
    locals) made from ``read.tensor``'s arrays as its writer left them; each writer
    level's size is the writer's size parameter of its index (``writer_sizes``), else the reader's."""
    mine = {(b.level, b.array): mapping[b.var.name] for b in bindings if b.role == "input" and b.storage == storage}
    size = {b.index: mapping[b.var.name] for b in bindings if b.role == "size"}
    source, prologue = _written_arrays(written, read.tensor, names)
    sizes = [n.i64(w) if isinstance(w, int) else writer_sizes.get(w) or size[r] for w, r in read.levels]
    return DiagonalCopy(mine, source, sizes, read), prologue


def _chunk_starts(node, arrays: set, lo):
    """``node`` with each load ``pos[e]`` of ``arrays`` (a chunk-appended temporary's
    row ends, counted from 0 in each ``[lo, hi)`` call) read as 0 at ``e == lo``: the
    chunk's first row starts at 0, while ``pos[lo]`` is the previous chunk's to write."""
    if isinstance(node, n.Load) and node.array in arrays:
        load = n.Load(node.array, _chunk_starts(node.index, arrays, lo))
        e = load.index
        if isinstance(e, n.Binary) and e.op == "+" and isinstance(e.rhs, n.Const) and e.rhs.value >= 1:
            return load  # a row's end, pos[row + 1]: past lo (the reader's rows are lo and after)
        return n.Select(n.Binary("==", e, lo), n.const(0, load.type), load)
    if isinstance(node, tuple):
        return tuple(_chunk_starts(x, arrays, lo) for x in node)
    if isinstance(node, (n.Var, n.Const, Type)) or not dataclasses.is_dataclass(node) or isinstance(node, type):
        return node
    changes = {}
    for f in dataclasses.fields(node):
        old = getattr(node, f.name)
        new = _chunk_starts(old, arrays, lo)
        if new is not old:
            changes[f.name] = new
    return dataclasses.replace(node, **changes) if changes else node


def made_arrays(low) -> set:
    """``(level, array)`` of every array a lowering's output parameters hand over."""
    return {(b.level, b.array) for b in low.code.bindings if b.role in ("output", "output_grow")}


def reads_plainly(low, written: dict, copies=(), diagonals: bool = False) -> bool:
    """Whether a lowering reads every tensor of ``written`` (name -> the arrays its
    writer makes, ``(level, array)``: :func:`made_arrays`) as itself, and only arrays the writer makes:
    no diagonal copy (with ``diagonals``, none the function cannot make itself:
    ``fused_diagonal.buildable``), and no
    transposed copy the runtime would have to make, except
    of the sparse temporaries named in ``copies`` read as a copy :func:`is_fused_copy`
    describes, which the fused function makes itself (``lower/fused_transpose.py``; the caller checked
    that their writers store them so it can)."""
    ops = low.operands
    for _storage, diagonal, fmt in diagonal_storages(low):
        d = ops.diagonals[diagonal]
        if d.operand in written and not (diagonals and buildable(d, fmt)):
            return False
    for op, fmt in ops.transposes.values():
        if op in written and not (op in copies and is_fused_copy(fmt)):
            return False
    for b in low.code.bindings:
        if b.role == "input" and b.storage in written and (b.level, b.array) not in written[b.storage]:
            return False
    return True


def is_fused_copy(fmt) -> bool:
    """Whether ``fmt`` is what an in-function copy is stored as (``lower/fused_transpose.py``):
    ``dc`` in either mode order, or a coordinate list (``c q ... q``)."""
    if fmt.blocks is not None or len(fmt.levels) < 2:
        return False
    if len(fmt.levels) == 2 and type(fmt.levels[0]) is Dense:
        return type(fmt.levels[1]) is Compressed and fmt.levels[1].unique
    return (type(fmt.levels[0]) is Compressed and fmt.levels[0].ordered
            and all(type(lvl) is Singleton and lvl.ordered for lvl in fmt.levels[1:]))


def parallel_rows(fn: n.Function) -> n.Function | None:
    """``fn`` over rows ``[lo, hi)`` (parameters ``lo``, ``hi`` first, the lowerer's
    convention for a kernel whose outer loop runs on threads) when its body is one
    block of declarations and one loop from 0, then ``return 0``; else None. The
    caller has checked that each iteration writes only its own rows."""
    body = list(fn.body.body)
    if len(body) != 2 or not isinstance(body[0], n.Block) or not isinstance(body[1], n.Return):
        return None
    found = _one_loop(list(body[0].body))
    if found is None or any(v.name in ("lo", "hi") for v in _variables(fn)):
        return None
    prefix, loop = found
    lo, hi = n.Var("lo", I64), n.Var("hi", I64)
    loop = dataclasses.replace(loop, start=lo, end=hi, parallel="threads")
    return dataclasses.replace(fn, params=(lo, hi) + tuple(fn.params),
                               body=n.Block((n.Block(tuple(prefix) + (loop,)), body[1])))


def _free_slot(slot, names) -> n.Block:
    """``free(slot[0]); slot[0] = NULL``: a grown temporary array freed, its slot
    emptied (so the runtime, which frees what a failed call left, frees nothing)."""
    array = n.Var(names("freed"), slot.type.elem)
    null = n.Var(names("null"), slot.type.elem)
    return n.Block((n.Comment(f"free the temporary's array {slot.name}[0]"),
                    n.Declare(array, n.Load(slot, n.i64(0))), n.Free(array),
                    n.Declare(null), n.Store(slot, n.i64(0), null)))


def _one_loop(stmts, loads: bool = False):
    """``(prefix, loop)`` when ``stmts`` are comments and declarations that read no
    array (any array with ``loads``: they stay before the loop), then one sequential
    ``For`` from 0 or one over a chunk's rows (``lo`` .. ``hi``, ``parallel_rows``'s
    threads); else None."""
    if not stmts or not isinstance(stmts[-1], n.For):
        return None
    loop = stmts[-1]
    if not (loop.parallel is None and loop.start == n.i64(0)
            or loop.parallel == "threads" and isinstance(loop.start, n.Var) and isinstance(loop.end, n.Var)):
        return None
    for s in stmts[:-1]:
        if isinstance(s, n.Comment):
            continue
        if isinstance(s, n.Declare) and (loads or not any(isinstance(x, n.Load) for x in n.walk(s))):
            continue
        return None
    return list(stmts[:-1]), loop


def _join_loops(previous: n.Block, stmts: list, var, sizes: set) -> n.Block | None:
    """``previous`` (a statement's block, or blocks already joined) with ``stmts``'s
    loop over ``var`` run inside its loop, at the same iteration; None when either
    is not one loop over every row: 0 to a size parameter (``sizes``: the caller
    checked that the two sizes are the same tensor's rows), or, in a function over
    chunks of rows, both a chunk's ``lo`` .. ``hi``. A first loop over an operand's
    stored positions (a compressed or packed level) visits only some rows.
    ``previous``'s declarations may read arrays (a temporary's slots: they still run
    before its loop); ``stmts``'s would move before that loop, so theirs may not."""
    first, second = _one_loop(list(previous.body), loads=True), _one_loop(stmts)
    if first is None or second is None or var is None or second[1].var != var:
        return None
    (prefix1, loop1), (prefix2, loop2) = first, second
    if loop1.parallel != loop2.parallel:
        return None
    if loop1.parallel is not None:  # a chunk's rows
        if loop1.start != loop2.start or loop1.end != loop2.end:
            return None
    elif not all(isinstance(e, n.Var) and e.name in sizes for e in (loop1.end, loop2.end)):
        return None
    inner = _rename(loop2.body, {var.name: loop1.var})
    loop = dataclasses.replace(loop1, body=n.Block(tuple(loop1.body.body) + (inner,)))
    return n.Block(tuple(prefix1 + prefix2 + [loop]))


def _variables(fn) -> list:
    """Every variable ``fn`` names, parameters first."""
    seen: dict = {}
    for p in fn.params:
        seen.setdefault(p.name, p)
    for node in n.walk(fn.body):
        if isinstance(node, n.Var):
            seen.setdefault(node.name, node)
        elif isinstance(node, n.PollInterrupt):
            for v in node.free:
                seen.setdefault(v.name, v)
    return list(seen.values())


def _rename(node, mapping: dict):
    """``node`` with every variable renamed by ``mapping`` (name -> Var)."""
    if isinstance(node, n.Var):
        return mapping.get(node.name, node)
    if isinstance(node, tuple):
        return tuple(_rename(x, mapping) for x in node)
    if isinstance(node, list):
        return [_rename(x, mapping) for x in node]
    if isinstance(node, Type) or not dataclasses.is_dataclass(node) or isinstance(node, type):
        return node
    changes = {}
    for f in dataclasses.fields(node):
        old = getattr(node, f.name)
        new = _rename(old, mapping)
        if new is not old:
            changes[f.name] = new
    return dataclasses.replace(node, **changes) if changes else node


def row_workspace(fn: n.Function, vals: n.Var, widths: list, zero: bool = True):
    """``fn`` with the dense temporary whose values parameter is ``vals`` kept as one
    row: a local array of ``prod(widths)`` values (the temporary's sizes after its
    first) allocated before the row loop, zeroed at the top of each iteration when
    ``zero`` (its writer does not store every element) unless the writer already
    zeroes the row there itself, indexed by the position within the row,
    and freed after the loop (and at each interrupt poll, error return or failed
    allocation inside it; a second row's failed allocation frees the first).
    Called on a fused (possibly ``parallel_rows``) function, so each thread's call
    allocates its own row. None when ``vals`` is not used only by loads and stores
    inside one top-level loop; the caller has checked that every access at iteration
    ``t`` of that loop lands in row ``t`` and that nothing outside reads the array."""
    if not widths or vals not in fn.params:
        return None
    body = list(fn.body.body)
    holders = [k for k, s in enumerate(body) if _mentions(s, vals)]
    if len(holders) != 1 or not isinstance(body[holders[0]], n.Block):
        return None
    stmts = list(body[holders[0]].body)
    at = [k for k, s in enumerate(stmts) if _mentions(s, vals)]
    if len(at) != 1 or not isinstance(stmts[at[0]], n.For):
        return None
    loop = stmts[at[0]]
    width = widths[0]
    for w in widths[1:]:
        width = n.Binary("*", width, w)
    ws = n.Var(vals.name.replace("_vals", "") + "_row", vals.type)
    if any(v.name == ws.name for v in _variables(fn)):
        return None
    inner = _RowRewrite(vals, ws, loop.var, width).stmt(loop.body)
    if _mentions(inner, vals):
        return None  # read other than element by element (a Gemm, a pointer handed on)
    if zero and not any(_zeroes_row(x, ws) for x in n.walk(inner)):
        q = n.Var("q_" + ws.name, I64)
        zero = n.Store(ws, q, n.const(0, vals.type.elem))
        inner = n.Block((n.Comment(f"zero {ws.name}: the row the statements fill next"),
                         n.For(q, n.i64(0), width, n.Block((zero,))), *inner.body))
    loop = dataclasses.replace(loop, body=inner)
    note = n.Comment(f"{ws.name}: the temporary's row, one per call (per thread), not the whole array")
    # row workspaces allocated before this one and freed after the loop: if this
    # allocation fails they are freed before the out-of-memory return
    after = stmts[at[0] + 1:]
    live = tuple(x.var for x in stmts[:at[0]] if isinstance(x, n.Allocate)
                 and any(isinstance(y, n.Free) and y.var == x.var for y in after))
    stmts[at[0]:at[0] + 1] = [note, n.Allocate(ws, width, free=live), loop, n.Free(ws)]
    body[holders[0]] = n.Block(tuple(stmts))
    params = tuple(p for p in fn.params if p != vals)
    return dataclasses.replace(fn, params=params, body=n.Block(tuple(body)))


class _RowRewrite:
    """Loads and stores of ``vals`` at iteration ``t`` moved to ``ws`` at the same
    place within the row; polls and error returns free ``ws`` first."""

    def __init__(self, vals, ws, t, width):
        self.vals, self.ws, self.t, self.width = vals, ws, t, width

    def index(self, e):
        # t*W + rest (how a row-major temporary's first index enters): rest
        if (isinstance(e, n.Binary) and e.op == "+" and isinstance(e.lhs, n.Binary) and e.lhs.op == "*"
                and e.lhs.lhs == self.t and not n.uses(e.rhs, {self.t})):
            return e.rhs
        return n.Binary("-", e, n.Binary("*", self.t, self.width))

    def expr(self, e):
        if isinstance(e, n.Load) and e.array == self.vals:
            return n.Load(self.ws, self.index(self.expr(e.index)))
        if isinstance(e, (n.Var, n.Const)) or not dataclasses.is_dataclass(e):
            return e
        return self._fields(e)

    def stmt(self, s):
        if isinstance(s, n.For) and _zeroes_row(s, self.vals):
            start = s.start
            if (isinstance(start, n.Binary) and start.op == "*" and start.lhs == self.t
                    and s.end == n.Binary("+", start, start.rhs)):  # for q in t*W .. t*W + W
                store = s.body.body[0]
                return dataclasses.replace(s, start=n.i64(0), end=start.rhs,
                                           body=n.Block((dataclasses.replace(store, array=self.ws),)))
        if isinstance(s, (n.Store, n.AtomicAdd, n.Prefetch)) and s.array == self.vals:
            changes = {"array": self.ws, "index": self.index(self.expr(s.index))}
            if not isinstance(s, n.Prefetch):
                changes["value"] = self.expr(s.value)
            return dataclasses.replace(s, **changes)
        if isinstance(s, n.Comment) and f" of {self.vals.name} here" in s.text:  # the row-zeroing note
            return n.Comment(f"zero {self.ws.name}, the row the statements fill next")
        if isinstance(s, (n.PollInterrupt, n.Allocate, n.Reallocate)):  # a poll or failed (re)allocation frees it too
            return dataclasses.replace(self._fields(s) if not isinstance(s, n.PollInterrupt) else s,
                                       free=tuple(s.free) + (self.ws,))
        if isinstance(s, n.Return) and s.status != n.STATUS_OK:
            return n.Block((n.Free(self.ws), s))
        if isinstance(s, n.Block):
            return n.Block(tuple(self.stmt(x) for x in s.body))
        return self._fields(s)

    def _fields(self, node):
        changes = {}
        for f in dataclasses.fields(node):
            old = getattr(node, f.name)
            if isinstance(old, n.Block):
                new = self.stmt(old)
            elif isinstance(old, tuple) and f.name != "free":
                new = tuple(self.stmt(x) if _is_stmt(x) else self.expr(x) for x in old)
            elif dataclasses.is_dataclass(old) and not isinstance(old, Type):
                new = self.stmt(old) if _is_stmt(old) else self.expr(old)
            else:
                new = old
            if new is not old:
                changes[f.name] = new
        return dataclasses.replace(node, **changes) if changes else node


def _is_stmt(x) -> bool:
    return isinstance(x, (n.Comment, n.Declare, n.Assign, n.Store, n.AtomicAdd, n.Block, n.For, n.While,
                          n.If, n.Allocate, n.Reallocate, n.Free, n.Sort, n.Prefetch, n.Gemm, n.Return,
                          n.PollInterrupt))


def _zeroes_row(s, vals) -> bool:
    """Whether ``s`` is a loop whose only statement stores a constant into ``vals``
    at the loop's index (a writer's own row zeroing, lower/coverage.zero_rows)."""
    if not isinstance(s, n.For) or len(s.body.body) != 1:
        return False
    x = s.body.body[0]
    return isinstance(x, n.Store) and x.array == vals and x.index == s.var and isinstance(x.value, n.Const)


def _mentions(node, var) -> bool:
    return any(isinstance(x, n.Var) and x == var for x in n.walk(node))
