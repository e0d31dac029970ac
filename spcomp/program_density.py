"""A program's chosen sparse temporaries, checked against the operands of a call.

``spcomp.compile`` stores a temporary that ``formats=`` does not name in the
format its writer's zero structure bounds (``lower/temporary_formats.py``): ``t =
A·B`` of csr operands is csr. That is right while ``t`` stays sparse; on operands
dense enough to fill it in (an expected fill ``1 - (1-p)^m`` above
``contract.SPARSE_TEMPORARY``), a dense ``t`` costs less. :class:`DensityVariants`
measures a call's operands (shapes and stored fractions, as the contraction
planner does), estimates each chosen temporary's fill
(:func:`~spcomp.lower.temporary_formats.expected_fills`) and, where some would
fill in, runs a variant of the program with those temporaries dense, compiled on
first use and kept per set of such temporaries. Operands whose objects are those of
the last call reuse its decision without measuring (a variant only chooses the
speed, never the answer). ``k.loops`` and ``k.launches`` describe what the last
call ran, the variant included.
"""
from __future__ import annotations

from .lower.contract import SPARSE_TEMPORARY
from .lower.temporary_formats import expected_fills, with_formats
from .notation import accesses
from .operand_stats import measure_operands


class DensityVariants:
    """Chooses, per call, between a program and its variants with temporaries dense."""

    def __init__(self, program, inputs, build):
        self.program = program
        self.build = build  # program -> its ProgramKernel (the variant's compiler)
        self.names = frozenset(name for name, _ops in program.chosen)
        dims: dict = {}
        for a in program.statements:
            for acc in accesses(a.rhs):
                if acc.tensor.name in inputs:
                    dims.setdefault(acc.tensor.name, [i.name for i in acc.indices])
        self._shape_of = [(name, program.tensors[name].format.is_dense, dims[name])
                          for name in inputs if name in dims]
        self.variants: dict = {}  # frozenset of temporaries made dense -> ProgramKernel
        self._last_ids = None
        self.last = None  # (fills, the variant or None) of the last call measured

    def kernel_for(self, operands):
        """The variant a call with ``operands`` runs, or None for the program itself."""
        ids = tuple(id(operands.get(name)) for name, _d, _i in self._shape_of)
        if ids == self._last_ids and self.last is not None:
            return self.last[1]
        measured = measure_operands(self._shape_of, operands)
        if measured is None:
            return None  # the program's own checks say what is wrong
        _key, shapes, density = measured
        fills = expected_fills(self.program.statements, self.names, shapes, density)
        full = frozenset(name for name, fill in fills.items() if fill > SPARSE_TEMPORARY)
        variant = None
        if full:
            variant = self.variants.get(full)
            if variant is None:
                variant = self.variants[full] = self._variant(full)
        self.last, self._last_ids = (fills, variant), ids
        return variant

    def _variant(self, dense: frozenset):
        """The program with the temporaries ``dense`` stored dense (compiled here)."""
        import dataclasses

        from .formats import Format
        program = self.program
        formats = {name: Format.dense(program.tensors[name].order) for name in dense}
        statements = tuple(with_formats(program.statements, formats))
        variant_program = dataclasses.replace(
            program, statements=statements, chosen=tuple((n, ops) for n, ops in program.chosen if n not in dense))
        return self.build(variant_program)

    def last_variant(self):
        """The variant the last call measured ran, or None (the program itself)."""
        return self.last[1] if self.last is not None else None

    def describe(self) -> str:
        """The line ``k.loops`` puts before a variant's loops after a call that ran one."""
        fills, variant = self.last
        dense = sorted(n for n in fills if n not in dict(variant.program.chosen))
        said = ", ".join(f"{n} (expected fill {fills[n]:.2f})" for n in dense)
        return (f"# for the last call's operands the chosen sparse temporaries {said} would fill past "
                f"{SPARSE_TEMPORARY}: this variant, with them dense, ran")
