"""Build script for the compiled parts of rtserver.

The hot paths ``rtserver/_fanout.pyx`` (fan-out) and ``rtserver/_wsframes.pyx`` (the
frame protocol of an open connection) are compiled with Cython. Compiler
directives are set per function in the ``.pyx`` (never globally here); only
``language_level`` is fixed for the module.

Set ``RTSERVER_ANNOTATE=1`` to also write ``rtserver/_fanout.html`` and
``rtserver/_wsframes.html``, Cython's
annotated view that shows every line of the hot loop that still talks to the
Python C-API::

    RTSERVER_ANNOTATE=1 python setup.py build_ext --inplace
"""

from __future__ import annotations

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

ANNOTATE = os.environ.get("RTSERVER_ANNOTATE", "0") == "1"

extensions = [
    Extension(
        "rtserver._fanout",
        sources=["rtserver/_fanout.pyx"],
        extra_compile_args=["-O2"],
    ),
    Extension(
        "rtserver._wsframes",
        sources=["rtserver/_wsframes.pyx"],
        extra_compile_args=["-O2"],
    ),
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": "3"},
        annotate=ANNOTATE,
        # An up-to-date .c would skip Cython and never write the HTML.
        force=ANNOTATE,
    ),
)
