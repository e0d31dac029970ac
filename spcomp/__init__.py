"""spcomp: a sparse tensor algebra compiler (index notation -> LLVM / CUDA C kernels)."""
from . import errors
from .errors import *  # noqa: F401,F403
from .formats import Format

__version__ = "0.1.0"
