"""Build hook for the optional C inner loops (``deepshrink/runtime/_native.c``); everything else is in pyproject.toml.

The extension is optional: where there is no C compiler or no Python headers the install still
succeeds and the kernels fall back to their numba versions (``deepshrink.runtime.kernels``).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "deepshrink.runtime._native",
            ["deepshrink/runtime/_native.c"],
            extra_compile_args=["-O3", "-fvisibility=hidden", "-std=c11"],
            optional=True,
        )
    ]
)
