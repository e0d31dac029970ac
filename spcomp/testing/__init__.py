"""Testing tools for spcomp kernels (public): a reference, a checker, hypothesis strategies.

* :func:`check_kernel` compiles an expression, runs it (on operands you give or
  random ones it draws) and asserts the result matches :func:`reference`, the
  same index notation evaluated densely with NumPy in float64.
* :mod:`spcomp.testing.strategies` (re-exported here) draws valid inputs for
  property tests with `hypothesis <https://hypothesis.readthedocs.io>`_:
  :func:`formats` (input formats), :func:`output_formats` (formats a kernel can
  assemble), :func:`tensors` (data of a shape, format, density and dtype),
  :func:`expressions` (random well-formed expressions with formats) and
  :func:`operands` (operands that fit a drawn expression).
* :mod:`spcomp.testing.programs` (re-exported here) draws programs of several
  statements (:func:`programs`, :func:`program_operands`) and products of three
  or more operands (:func:`products`), with :func:`reference_program`, the
  statement-by-statement reference.

A property test over random kernels::

    from hypothesis import given, strategies as st
    from spcomp.errors import UnsupportedError
    from spcomp.testing import check_kernel, expressions, operands

    @given(st.data())
    def test_kernels(data):
        case = data.draw(expressions(max_operands=3, max_order=2))
        ops = data.draw(operands(case))
        try:
            check_kernel(case.text, case.formats, ops)
        except UnsupportedError as e:      # the compiler may refuse, with a reason
            assert str(e)

The strategies need ``hypothesis`` (``pip install spcomp[test]``);
:func:`check_kernel`, :func:`reference` and :func:`random_operands` do not.
"""
from __future__ import annotations

from .check import (TOLERANCES, VALUES, KernelCheck, check_kernel, densify, fit_packed, random_operands,
                    random_tensor, random_values, tolerance)
from .reference import reference

__all__ = ["TOLERANCES", "KernelCheck", "check_kernel", "densify", "random_operands", "reference",
           "tolerance", "ExpressionCase", "expressions", "fit_packed", "formats", "operands",
           "output_formats", "tensors", "random_tensor", "random_values", "VALUES",
           "ProgramCase", "programs", "program_operands", "products", "reference_program"]


def __getattr__(name):
    # the strategies import hypothesis, which a user of check_kernel may not have
    if name in ("ExpressionCase", "expressions", "formats", "operands", "output_formats", "tensors",
                "index_sizes", "all_format_strings", "strategies"):
        import importlib
        strategies = importlib.import_module(f"{__name__}.strategies")
        return strategies if name == "strategies" else getattr(strategies, name)
    if name in ("ProgramCase", "programs", "program_operands", "products", "reference_program"):
        import importlib
        return getattr(importlib.import_module(f"{__name__}.programs"), name)
    raise AttributeError(f"module 'spcomp.testing' has no attribute {name!r}")
