"""Backends: TVM (compiles), ONNX Runtime (reference). Registered by name, not switched on."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import SparsecError

_BACKENDS: dict[str, Callable[[], object]] = {}


def register_backend(name: str, factory: Callable[[], object]) -> None:
    _BACKENDS[name] = factory


def get_backend(name: str):
    if name not in _BACKENDS:
        raise SparsecError(f"unknown backend {name!r}; available: {', '.join(sorted(_BACKENDS))}")
    return _BACKENDS[name]()


def _tvm():
    from .tvm.backend import TVMBackend

    return TVMBackend()


def _ort():
    from .ort import ORTBackend

    return ORTBackend()


register_backend("tvm", _tvm)
register_backend("ort", _ort)
