"""Versions of sparsec and the libraries it builds with (for manifests and bench reports)."""

from __future__ import annotations

import functools
from importlib import metadata


@functools.cache
def versions() -> dict[str, str]:
    found = {}
    for name, dist in [("sparsec", "sparsec"), ("tvm", "apache-tvm"), ("onnx", "onnx"),
                       ("onnxruntime", "onnxruntime"), ("numpy", "numpy")]:
        try:
            found[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[name] = "unknown"
    return found
