"""Builds the Cython preprocessing kernel into ``xray_infer._preprocess``.

OpenMP is used when the compiler accepts ``-fopenmp``; otherwise the same source builds
serially (``prange`` degrades to ``range``).
"""
import os
import shutil
import sys
import tempfile

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools._distutils.ccompiler import new_compiler
from setuptools._distutils.errors import CompileError, LinkError
from setuptools._distutils.sysconfig import customize_compiler


def _openmp_flags():
    """Return (compile, link) flags for OpenMP, or empty lists if the compiler lacks it."""
    if os.environ.get("XRAY_INFER_NO_OPENMP"):
        return [], []
    flag = "/openmp" if sys.platform == "win32" else "-fopenmp"
    compiler = new_compiler()
    customize_compiler(compiler)
    tmp = tempfile.mkdtemp()
    try:
        src = os.path.join(tmp, "omp_check.c")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main(void){return omp_get_max_threads() < 1;}\n")
        objs = compiler.compile([src], output_dir=tmp, extra_postargs=[flag])
        compiler.link_executable(objs, os.path.join(tmp, "omp_check"), extra_postargs=[flag])
    except (CompileError, LinkError):
        return [], []
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [flag], ([] if sys.platform == "win32" else [flag])


omp_compile, omp_link = _openmp_flags()
opt = ["/O2"] if sys.platform == "win32" else ["-O3"]

extensions = [
    Extension(
        "xray_infer._preprocess",
        ["ext/_preprocess.pyx"],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=opt + omp_compile,
        extra_link_args=omp_link,
    )
]

setup(ext_modules=cythonize(extensions, language_level=3))
