"""Versions of installed packages, read from their metadata: nothing is imported (tensorrt stays unloaded)."""

from __future__ import annotations

import importlib.metadata

# Distributions that may carry TensorRT's Python package.
_TRT_DISTRIBUTIONS = ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11",
                      "tensorrt-cu13-bindings", "tensorrt-cu12-bindings", "tensorrt-bindings")


def package_version(*distributions: str) -> str | None:
    """Version of the first of ``distributions`` that is installed, else None."""
    for dist in distributions:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def installed_trt_version() -> str | None:
    """Version of the installed tensorrt package, whichever distribution brought it."""
    return package_version(*_TRT_DISTRIBUTIONS)
