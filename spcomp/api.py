"""``spcomp.compile``: text + formats + schedule -> Kernel, cached in memory."""
from __future__ import annotations

import functools
import os
import warnings

from .errors import DensifyWarning, TranspositionWarning
from .formats import Format
from .notation.functions import densifying_calls
from .kernel import Kernel
from .lower.lowerer import Options
from .schedule import Schedule, check_names
from .backends import get_target
from .runtime import forksafe, tuning

_cache: dict = {}
_cache_lock = forksafe.Lock()


def _format_key(formats) -> tuple:
    """Formats as canonical specs, so "csr" and Format.csr() share a cache entry."""
    if not formats:
        return ()

    return tuple(sorted((k, v.spec() if isinstance(v, Format) else _string_spec(str(v)))
                        for k, v in formats.items()))


@functools.lru_cache(maxsize=1024)
def _string_spec(text: str) -> str:
    """Canonical spec of a format string (memoised: parsing on every compile() call
    made a cache hit 4x slower)."""
    try:
        return Format.parse(text).spec()
    except Exception:  # needs the tensor's order ('dense') or is invalid: keep the text
        return text


def _dtype_key(dtypes) -> tuple:
    if not dtypes:
        return ()
    return tuple(sorted((k, str(getattr(v, "__name__", v))) for k, v in dtypes.items()))


def compile(expression: str, formats: dict | None = None, dtype="float64", schedule: Schedule | None = None,
            backend: str = "cpu", *, dtypes: dict | None = None, drop_zeros: bool | None = None,
            name: str = "kernel", outputs=None):
    """Compile one line of index notation into a kernel.

    ``formats`` maps tensor names to a format string or :class:`Format` (others are
    dense); ``dtype`` is the value type of every tensor not named in ``dtypes``
    ("float32", "float64" or "bfloat16"); ``schedule`` changes the default loop
    nest; ``backend`` is "cpu", "cuda" or "cuda-sim"; ``drop_zeros`` makes a sparse
    output skip values that compute to zero (default: where a loop over the
    output's sparse level is dense, and always for packed-block outputs).

    Several statements (separated by ``;`` or newlines) make a program
    (:class:`~spcomp.program.ProgramKernel`): later statements read what earlier
    ones wrote; ``outputs`` names what it returns (default: every written name no
    later statement reads), the other written names are temporaries (stored as
    ``formats`` names them, else sparse where the statement writing them is zero
    wherever a sparse operand stores nothing, dense elsewhere).
    """
    from .frontend import to_notation
    explicit = schedule is not None
    schedule = schedule or Schedule()
    dtype_name = getattr(dtype, "__name__", None) or str(dtype)
    # without a schedule the kernel is the latest tuned one's: a new tuning makes a new key
    key = (expression, _format_key(formats), dtype_name, _dtype_key(dtypes),
           schedule.key() if explicit else ("tuned", tuning.generation()), backend, drop_zeros, name,
           outputs if outputs is None or isinstance(outputs, str) else tuple(outputs))
    with _cache_lock:
        kernel, densifying = _cache.get(key, (None, ()))
    if kernel is None and _is_program(expression, outputs):
        kernel = _compile_program(expression, formats, dtype, dtypes, schedule, backend, drop_zeros, name, outputs)
        densifying = _remember(key, kernel)
    if kernel is None:
        notation = to_notation(expression, formats=formats, dtypes=dtypes, default_dtype=dtype)
        target = get_target(backend)
        check_names(schedule, notation)
        options = options_from_schedule(schedule, drop_zeros, name, target.capabilities)
        kernel = Kernel(expression, notation, options, target, schedule)
        # the schedules spcomp.tune kept for this kernel, by problem: the first call picks (tuner.py)
        kernel.tuned_buckets = None if explicit else (_tuned(expression, notation, backend) or None)
        kernel.autotune = not explicit and os.environ.get("SPCOMP_AUTOTUNE") == "1"
        _attach_contraction(kernel, schedule, explicit)
        densifying = _remember(key, kernel)
    for w in kernel.warnings:  # on every compile, cached or not: the copy happens on every call
        warnings.warn(w, TranspositionWarning, stacklevel=2)
    for w in densifying:  # likewise: the warning is about every call
        warnings.warn(w, DensifyWarning, stacklevel=2)
    return kernel


def _remember(key, kernel) -> tuple:
    """Cache ``kernel`` under ``key`` with its DensifyWarning texts (found once, not on
    every compile that hits the cache); returns those texts."""
    statements = kernel.program.statements if hasattr(kernel, "program") else (kernel.notation,)
    texts = tuple(f"{call!r} is not 0 where {acc.tensor.name} stores nothing ({call.func} of 0 is "
                  f"not 0), so the kernel visits every coordinate, not only {acc.tensor.name}'s "
                  f"{acc.tensor.format} entries; functions with f(0) = 0 (relu, sin, sqrt ...) keep "
                  f"a sparse operand's iteration"
                  for a in statements for call, acc in densifying_calls(a.rhs))
    with _cache_lock:
        _cache[key] = (kernel, texts)
    return texts


def _attach_contraction(kernel, schedule, explicit: bool) -> None:
    """Give a product of three or more tensors its contraction planner, and a reduction
    under an element-wise epilogue its split (spcomp/contraction.py, lower/epilogue.py)."""
    from .contraction import Contraction
    fixed = schedule.get("factorize")
    if fixed and fixed[-1][0] is False:
        return
    if Contraction.applies(kernel.notation):
        kernel.contraction = Contraction(kernel, fixed[-1][0] if fixed else None)
    elif not explicit:  # (a schedule names the statement's loops: it runs as written)
        from .lower.epilogue import split
        plan = split(kernel.notation)
        if plan is not None:
            kernel.contraction = Contraction(kernel, plan=plan)


def _is_program(expression, outputs) -> bool:
    from .frontend.program import is_program
    return is_program(expression) or outputs is not None


def _compile_program(expression, formats, dtype, dtypes, schedule, backend, drop_zeros, name, outputs):
    """A :class:`~spcomp.program.ProgramKernel` for several statements."""
    from .errors import ScheduleError
    from .frontend.program import check_program, split_statements
    from .program import ProgramKernel
    program = check_program(split_statements(expression), formats, dtypes, dtype, outputs)
    if schedule.directives:
        raise ScheduleError("a program of several statements takes no schedule yet; compile a statement "
                            "alone to schedule it")
    target = get_target(backend)
    options = options_from_schedule(schedule, drop_zeros, name, target.capabilities)
    return _with_chosen_temporaries(program, formats or {},
                                    lambda p: ProgramKernel(expression, p, options, target, schedule))


def _with_chosen_temporaries(program, given: dict, build):
    """``build(program)`` with each temporary that ``given`` does not name stored in
    the format its writer's zero structure bounds (``lower/temporary_formats.py``);
    where the program does not compile so (an spcomp error), every temporary dense."""
    import dataclasses

    from .errors import SpcompError
    from .lower.temporary_formats import choose_temporary_formats, with_formats
    chosen = choose_temporary_formats(program.statements, program.temporaries, given)
    if not chosen:
        return build(program)
    picked = dataclasses.replace(
        program, statements=tuple(with_formats(program.statements, {n: c.format for n, c in chosen.items()})),
        chosen=tuple((n, c.operands) for n, c in chosen.items()))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            kernel = build(picked)
        except SpcompError:
            kernel = None
    if kernel is None:
        return build(program)
    for w in caught:  # the picked program's own warnings, now that it is the one returned
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return kernel


def vjp(expression: str, wrt=None, formats: dict | None = None, dtype="float64", *, dtypes: dict | None = None,
        dense=False, cotangent_format=None, backend: str = "cpu", schedule: Schedule | None = None):
    """The backward pass of ``expression``: one derived gradient statement per operand
    in ``wrt`` (default: every operand), compiled like any kernel (docs/autodiff.md).

    A sparse operand's gradient is taken at its stored pattern, in its format, unless
    ``dense`` is True or names it; the cotangent is read in the output's format
    (``cotangent_format`` overrides). Returns a :class:`spcomp.autodiff.VJP`: call it
    as ``vjp(dY, **operands)`` for ``{name: gradient}``."""
    from .autodiff import VJP
    from .frontend import to_notation
    notation = to_notation(expression, formats=formats, dtypes=dtypes, default_dtype=dtype)
    drops = False
    if not notation.lhs.tensor.format.is_dense:  # whether the forward stores only nonzeros
        forward = compile(expression, formats, dtype, schedule, backend, dtypes=dtypes)
        drops = forward.lowered.output.drops_zeros
    return VJP(notation, wrt, dense=dense, target=get_target(backend), kernel_class=Kernel,
               cotangent_format=cotangent_format, schedule=schedule, output_drops_zeros=drops)


def _tuned(expression, notation, backend) -> dict:
    try:
        return tuning.tuned_buckets(expression, notation, backend)
    except Exception:  # an unreadable tuning cache never stops a compile
        return {}


def options_from_schedule(schedule: Schedule, drop_zeros, name, caps) -> Options:
    """The lowering options of ``schedule`` for a backend with capabilities ``caps``."""
    return Options.from_schedule(schedule, drop_zeros, name, caps)


def clear_cache() -> None:
    """Forget every compiled kernel held in memory."""
    with _cache_lock:
        _cache.clear()
