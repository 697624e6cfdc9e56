"""Build the optional C accelerator; skqueue works without it (pure-Python fallback)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("skqueue._speedups", ["skqueue/_speedups.c"], optional=True),
    ]
)
