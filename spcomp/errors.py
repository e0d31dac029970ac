"""The spcomp exception hierarchy.

Every error a user can provoke is a subclass of :class:`SpcompError`, and its
message names the culprit: the token (parse), the tensor and dimension (shape),
the level (format) or the loop (schedule).
"""
from __future__ import annotations


class SpcompError(Exception):
    """Base class of every error spcomp raises on purpose."""


class ParseError(SpcompError):
    """The expression text is not valid index notation.

    Carries ``line`` and ``column`` (1-based) and a message that shows the
    offending line with a caret under the token.
    """

    def __init__(self, message: str, line: int = 0, column: int = 0, text: str = ""):
        self.line = line
        self.column = column
        self.text = text
        if text and line:
            src = text.splitlines()[line - 1] if text.splitlines() else ""
            message = f"{message} (line {line}, column {column})\n  {src}\n  {' ' * (column - 1)}^"
        super().__init__(message)


class NotationError(SpcompError):
    """The expression parses but has no meaning: unknown function, wrong arity,
    an index bound to two different dimensions, output on the right side..."""


class UnknownFunctionError(NotationError):
    """A function name that spcomp does not know."""


class LimitError(NotationError):
    """The expression is larger than spcomp compiles: more operands, more index
    variables or deeper nesting than the limit the message states
    (``spcomp.frontend.limits``)."""


class FormatError(SpcompError):
    """A format string or Format that is malformed or that does not fit the tensor."""


class UnsupportedError(SpcompError):
    """A combination of expression, formats and schedule that spcomp cannot lower.

    The message says why and, where one exists, names a format or schedule that works."""


class ScheduleError(SpcompError):
    """An illegal schedule: a race on an output, a reorder that breaks concordance..."""


class OperandError(SpcompError):
    """A kernel call with a missing, unexpected or unusable operand."""


class ShapeError(SpcompError):
    """Operands whose dimensions disagree with each other or with the expression."""


class DTypeError(SpcompError):
    """An operand whose dtype the kernel cannot take."""


class InvalidTensorError(SpcompError):
    """Sparse storage arrays that are not well formed (pos not monotone, coordinates
    out of range or unsorted where the level is ordered, inconsistent lengths)."""


class PackedOverflowError(SpcompError):
    """A packed-block (TwELL/ELL) level got more nonzeros in a block than it has slots."""

    def __init__(self, message: str, largest_count: int | None = None):
        self.largest_count = largest_count
        super().__init__(message)


class KernelRuntimeError(SpcompError):
    """The generated kernel reported a failure through its status code."""


class BackendUnavailableError(SpcompError):
    """The requested backend cannot run here (no pycuda, no GPU, no compiler)."""


class CacheError(SpcompError):
    """A saved kernel file that is corrupt, truncated or built for another machine."""


class TranspositionWarning(UserWarning):
    """spcomp inserted a transposition (format conversion) of an operand to make
    its accesses concordant with the loop order."""


class DensifyWarning(UserWarning):
    """A function that is not 0 at 0 (``exp``, ``cos``, ``pow(x, 0)`` ...) is applied
    to a sparse operand where nothing multiplies it away: the kernel visits every
    coordinate, not only the stored ones."""


class InsecureCacheWarning(UserWarning):
    """spcomp did not use a cache directory (kernels, cuda-sim libraries) because
    another user could write into it; it compiles without that cache instead."""
