"""Only the optional C extension lives here; everything else is in pyproject.toml.

pipeline/_native.c checks a receipt line's hash in one call (the hot path of verifying a
million receipts). It needs a C compiler, Python's headers and OpenSSL's (libssl-dev, installed
by `make`); when it can't be built the install goes on and receipts.py uses its Python twin.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "pipeline._native",
            ["pipeline/_native.c"],
            libraries=["crypto"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
