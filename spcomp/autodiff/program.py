"""A statement's backward pass: the derived gradient statements, compiled and run.

:class:`VJP` derives (with :func:`~.derive.derive`) one gradient per operand asked
for, compiles each derived statement once as an ordinary kernel, and runs them on
a cotangent and the forward operands. Two rules fix what a gradient *is*
(docs/autodiff.md):

* **Sparse operands.** By default the gradient of an operand in a sparse format is
  taken at its stored pattern, in its format: the derived statement reads a
  ``pattern`` operand (the operand's own index arrays with every value 1) as a
  factor, so it is the sampled (SDDMM-shaped) product and costs what the stored
  entries cost. ``dense=`` asks for a dense gradient instead.
* **Sparse outputs.** The cotangent of an output in a sparse format is read in
  that format: the gradient flows only through the output's stored positions
  (a ReLU into TwELL: the stored pattern *is* the mask).

This module builds kernels but does not import the public API above it: the
caller hands it the Kernel class (``spcomp.Kernel.vjp``, ``spcomp.vjp``).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import NotationError, OperandError, SpcompError, UnsupportedError
from ..formats import Format
from ..frontend import to_notation, unparse
from ..lower.record import Options
from ..notation import Access, Assignment, TensorVar, accesses
from ..schedule import Schedule
from .derive import Gradient, Names, derive, names_in


def _text(a: Assignment) -> str:
    """``a`` as text with implicit sums where that text reads back as ``a`` (the
    frontend puts every sum where ``a`` has it), else with its sums explicit (which
    documents the statement; the kernel is compiled from ``a`` itself)."""
    try:
        text = unparse(a)
        back = to_notation(text, formats={n: t.format for n, t in a.tensors.items()},
                           dtypes={n: t.dtype for n, t in a.tensors.items()})
    except SpcompError:
        return repr(a)
    return text if back == a else repr(a)


class VJP:
    """The vector–Jacobian products of one statement (see the module docstring).

    ``statements[name]`` is the list of gradient statements of operand ``name``
    (more than one only for a diagonal access); calling the VJP with the cotangent
    and the forward operands returns ``{name: gradient}``."""

    def __init__(self, notation: Assignment, wrt=None, *, dense=False, target, kernel_class,
                 cotangent_format=None, schedule: Schedule | None = None, output_drops_zeros: bool = False):
        self.notation = notation
        tensors = notation.tensors
        out = notation.lhs.tensor
        inputs = [n for n in tensors if n != out.name]
        wrt = list(inputs if wrt is None else ([wrt] if isinstance(wrt, str) else wrt))
        for name in wrt:
            if name not in inputs:
                raise NotationError(f"wrt names {name!r}, which is not an operand of {notation!r}; "
                                    f"its operands are {', '.join(inputs) or 'none'}")
        dense = set(wrt) if dense is True else set() if dense is False else set(dense)
        names = Names(names_in(notation))
        cot_fmt = out.format if cotangent_format is None else Format.parse(cotangent_format, ndim=out.order)
        self.cotangent = TensorVar(names.fresh("d" + out.name), out.order, cot_fmt, out.dtype)
        self.gradients: dict = {}
        for name in wrt:
            t = tensors[name]
            pattern = None
            if not t.format.is_dense and name not in dense:
                pattern = TensorVar(names.fresh(name + "_pattern"), t.order, t.format, t.dtype)
            g = derive(notation, name, self.cotangent, names.fresh("d" + name), pattern,
                       zero_dropping=output_drops_zeros and not cot_fmt.is_dense and cot_fmt == out.format)
            self.gradients[name] = g
        self._target = target
        self._kernel_class = kernel_class
        self._schedule = schedule or Schedule()
        self._kernels: dict = {}

    # ----------------------------------------------------------- inspection
    @property
    def statements(self) -> dict:
        """Operand name -> its gradient statements (index notation)."""
        return {n: list(g.parts.values()) for n, g in self.gradients.items()}

    @property
    def expressions(self) -> dict:
        """Operand name -> its gradient statements as text (implicit sums)."""
        return {n: [_text(a) for a in g.parts.values()] for n, g in self.gradients.items()}

    @property
    def index_notation(self) -> str:
        """Every gradient statement with its sums explicit, one a line."""
        return "\n".join(repr(a) for g in self.gradients.values() for a in g.parts.values())

    def kernel(self, name: str, part=None):
        """The compiled kernel of operand ``name``'s gradient (its plain part, or the
        diagonal ``part``), compiled on first use and kept."""
        g = self.gradients[name]
        part = part if part is not None else next(iter(g.parts))
        key = (name, part)
        k = self._kernels.get(key)
        if k is None:
            a = g.parts[part]
            options = Options.from_schedule(self._schedule, False, "vjp_" + name, self._target.capabilities)
            try:
                k = self._kernel_class(_text(a), a, options, self._target, self._schedule)
            except UnsupportedError:
                out = a.lhs.tensor
                if out.format.is_dense:
                    raise
                # a format no kernel assembles (blocked, ...): append coordinates, convert after
                fmt = Format.parse("coo" if out.order > 1 else "c", ndim=out.order)
                a = Assignment(Access(dataclasses.replace(out, format=fmt), a.lhs.indices), a.rhs)
                k = self._kernel_class(_text(a), a, options, self._target, self._schedule)
            self._kernels[key] = k
        return k

    def compile(self) -> "VJP":
        """Compile every gradient kernel now (they compile on first call otherwise)."""
        for name, g in self.gradients.items():
            for part in g.parts:
                self.kernel(name, part)
        return self

    def __repr__(self) -> str:
        return f"<spcomp.VJP of {self.notation!r}:\n  " + self.index_notation.replace("\n", "\n  ") + ">"

    # ------------------------------------------------------------------ run
    def __call__(self, cotangent, **operands) -> dict:
        """``{name: ∂L/∂name}`` for the cotangent ``∂L/∂Y`` and the forward operands
        (the same names as the forward call; the output is not needed)."""
        return {name: self._gradient(g, cotangent, operands) for name, g in self.gradients.items()}

    def gradient(self, name: str, cotangent, **operands):
        """The gradient of operand ``name`` alone (as ``self(cotangent, ...)[name]``)."""
        if name not in self.gradients:
            raise NotationError(f"no gradient of {name!r} was derived; derived: {', '.join(self.gradients)}")
        return self._gradient(self.gradients[name], cotangent, operands)

    def _gradient(self, g: Gradient, cotangent, operands: dict):
        tensor = self.notation.tensors[g.operand]
        if g.operand not in operands:
            raise OperandError(f"the gradient of {g.operand!r} needs the forward operand {g.operand!r}")
        value = operands[g.operand]
        shape = _shape(value, tensor.order)
        args = {n: v for n, v in operands.items() if n in self.notation.tensors and n != self.notation.lhs.tensor.name}
        args[self.cotangent.name] = cotangent
        for scalar, index in (g.sizes or {}).items():
            args[scalar] = float(_index_size(self.notation, operands, index))
        if not g.parts:  # every occurrence passes through a piecewise-constant function
            return _zero_gradient(value, tensor, g.pattern is not None, shape)
        total = None
        for part, a in g.parts.items():
            kargs = {n: args[n] for n in a.tensors if n in args}
            plain = part == tuple(range(tensor.order))
            if plain and g.pattern is not None:
                kargs[g.pattern] = pattern_of(value, tensor.format)
                got = self.kernel(g.operand, part)(**kargs)
                if got.format != tensor.format:
                    got = got.to_format(tensor.format, drop_zeros=False)
                if len(g.parts) == 1:
                    return got
                total = got.to_numpy() if total is None else total + got.to_numpy()
                continue
            # the gradient's shape is the operand's: given, so a statement that reads none of
            # its indices (or folds to 0, as through sign or floor) still knows it
            out_shape = tuple(shape[part.index(k)] for k in range(len(set(part))))
            kargs[a.lhs.tensor.name] = np.zeros(out_shape, dtype=_np_dtype(tensor.dtype))
            got = self.kernel(g.operand, part)(**kargs)
            if plain and len(g.parts) == 1 and g.pattern is None:  # the common case: as computed
                return got if tensor.order else np.asarray(got)[()]
            got = np.asarray(got, dtype=np.float64)
            full = got if plain else _embed(got, part, shape)
            total = full if total is None else total + full
        if g.pattern is not None:  # only diagonal parts: sample the dense sum at the pattern
            from ..runtime.tensor import as_tensor
            mask = pattern_of(value, tensor.format).to_numpy() != 0
            return as_tensor(np.where(mask, total, 0.0).astype(_np_dtype(tensor.dtype)), tensor.format)
        return total.astype(_np_dtype(tensor.dtype)) if tensor.order else total.astype(
            _np_dtype(tensor.dtype))[()]


def _zero_gradient(value, tensor, at_pattern: bool, shape: tuple):
    """A gradient that is 0 everywhere, in the form a computed one would take."""
    if at_pattern:
        from ..runtime import Tensor
        p = pattern_of(value, tensor.format)
        return Tensor(p.format, p.shape, p.levels, np.zeros_like(p.vals))
    zero = np.zeros(shape, dtype=_np_dtype(tensor.dtype))
    return zero if tensor.order else zero[()]


def _index_size(notation: Assignment, operands: dict, index: str) -> int:
    """The size of ``index`` in the forward statement, from its operands' shapes."""
    for acc in accesses(notation.rhs):
        for d, i in enumerate(acc.indices):
            if i.name == index and acc.tensor.name in operands:
                return _shape(operands[acc.tensor.name], acc.tensor.order)[d]
    raise OperandError(f"cannot tell the size of index {index!r} from the operands given")


def _np_dtype(name: str):
    from ..runtime.plan import np_dtype
    return np_dtype(name)


def _shape(value, order: int) -> tuple:
    if order == 0:
        return ()
    shape = getattr(value, "shape", None)
    if shape is None:
        shape = np.shape(value)
    return tuple(int(s) for s in shape)


def pattern_of(value, format):
    """``value`` in ``format`` with every stored value 1: the positions a gradient is
    taken at (it shares the index arrays of the operand's storage)."""
    from ..runtime.tensor import Tensor, as_tensor
    t = value if isinstance(value, Tensor) and value.format == format else as_tensor(_host(value), format)
    return Tensor(t.format, t.shape, t.levels, np.ones_like(t.vals), validated=t.validated)


def _host(value):
    """A torch tensor as what ``as_tensor`` reads (its dense or sparse NumPy form)."""
    if type(value).__module__.startswith("torch"):
        from ..runtime.tensor import Tensor
        return Tensor.from_torch(value)
    return value


def _embed(values: np.ndarray, part: tuple, shape: tuple) -> np.ndarray:
    """The diagonal part ``values`` (axes: the distinct indices) as a full array of
    ``shape`` that is zero off its diagonal."""
    out = np.zeros(shape, dtype=np.float64)
    letters = "abcdefghijklmnopqrstuvwxyz"
    spec = "".join(letters[k] for k in part) + "->" + "".join(letters[k] for k in range(len(set(part))))
    np.einsum(spec, out)[...] = values  # einsum returns a writable view on the diagonal
    return out
