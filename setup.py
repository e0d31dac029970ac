"""The optional native entry of a repeated call (runtime/fastentry.c, see
runtime/native_entry.py): built against NumPy's headers, which only a build
script can find. Everything else about the package is in pyproject.toml."""
import numpy
from setuptools import Extension, setup

setup(ext_modules=[Extension("spcomp.runtime.fastentry", ["runtime/fastentry.c"],
                             include_dirs=[numpy.get_include()], extra_compile_args=["-O2"], optional=True)])
