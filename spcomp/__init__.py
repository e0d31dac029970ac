"""spcomp: a sparse tensor algebra compiler (index notation -> LLVM / CUDA C kernels).

>>> import spcomp
>>> k = spcomp.compile("y[i] = W[i,j] * x[j]", formats={"W": "csr"})
>>> y = k(W=w, x=x)          # doctest: +SKIP
"""
from . import errors
from .errors import *  # noqa: F401,F403
from .formats import Format
from .schedule import Schedule

from .version import __version__  # noqa: F401


def __getattr__(name):
    # import the heavier parts on first use, so `import spcomp` stays quick
    if name == "compile":
        from .api import compile
        return compile
    if name == "vjp":
        from .api import vjp
        return vjp
    if name == "tune":
        from .tuner import tune
        return tune
    if name == "clear_cache":
        from .api import clear_cache
        return clear_cache
    if name == "load":
        from .saved import load
        return load
    if name == "loads":
        from .saved import loads
        return loads
    if name == "Kernel":
        from .kernel import Kernel
        return Kernel
    if name == "ProgramKernel":
        from .program import ProgramKernel
        return ProgramKernel
    if name == "Tensor":
        from .runtime import Tensor
        return Tensor
    if name in ("set_num_threads", "get_num_threads", "thread_limit"):
        from .runtime import threads
        return getattr(threads, name)
    if name == "testing":
        import importlib
        return importlib.import_module(".testing", __name__)
    raise AttributeError(f"module 'spcomp' has no attribute {name!r}")
