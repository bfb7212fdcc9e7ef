"""Inputs for benchmarking: generated from the model's input specs (seeded), or read from .npz."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import SparsecError
from ..ir.graph import Graph
from ..ir.types import TensorType, numpy_dtype


def batch_dims(graph: Graph, batch: int | None) -> dict[str, int]:
    """Pin the leading symbolic dim of every input to ``batch`` (the usual batch axis)."""
    if batch is None:
        return {}
    dims = {}
    for value in _inputs(graph):
        shape = value.type.shape if isinstance(value.type, TensorType) else None
        if shape and isinstance(shape[0], str):
            dims[shape[0]] = batch
    if not dims:
        raise SparsecError("--batch needs an input whose first dim is symbolic; this model has none "
                           "(its inputs are: " + ", ".join(f"{v.name}{list(v.type.shape or [])}" for v in _inputs(graph)) + ")")
    return dims


def generate(graph: Graph, dims: dict[str, int], seed: int = 0, shapes: dict[str, list[int]] | None = None) -> dict[str, np.ndarray]:
    """Seeded inputs: floats ~ N(0, 1); indices into a constant Gather table in range; names with
    'mask' all ones; other integers in [0, 4); bools random. Every symbolic dim must be pinned."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in _inputs(graph):
        t = value.type
        if not isinstance(t, TensorType) or t.shape is None or t.dtype is None:
            raise SparsecError(f"input {value.name!r} has no known shape; give inputs with --inputs FILE.npz")
        if shapes and value.name in shapes:
            feeds[value.name] = _values(graph, value, t.dtype, list(shapes[value.name]), rng)
            continue
        shape = []
        for d in t.shape:
            size = dims.get(d, d) if isinstance(d, str) else d
            if not isinstance(size, int):
                raise SparsecError(f"input {value.name!r} has unpinned dim {d!r}: give --batch N, --dim {d}=N or --shape {value.name}=D0,D1,..." if d else
                                   f"input {value.name!r} has an unnamed unknown dim: give --shape {value.name}=D0,D1,...")
            shape.append(size)
        feeds[value.name] = _values(graph, value, t.dtype, shape, rng)
    return feeds


def _values(graph: Graph, value, dtype: str, shape: list[int], rng) -> np.ndarray:
    np_dtype = numpy_dtype(dtype)
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if np.issubdtype(np_dtype, np.integer):
        if "mask" in value.name.lower():
            return np.ones(shape, np_dtype)
        return rng.integers(0, _index_bound(graph, value) or 4, shape).astype(np_dtype)
    if np.issubdtype(np_dtype, np.floating) or dtype in ("bfloat16", "float16"):
        return rng.standard_normal(shape).astype(np_dtype)
    raise SparsecError(f"cannot generate {dtype} input {value.name!r}; give inputs with --inputs FILE.npz")


def _index_bound(graph: Graph, value) -> int | None:
    """Rows of the constant table a Gather indexes with this input (embedding lookups)."""
    for node in graph.nodes:
        if node.op_type == "Gather" and node.input(1) is value:
            table = node.input(0)
            axis = int(node.attr("axis", 0))
            if table is not None and table.const is not None:
                return int(table.const.shape[axis])
    return None


def load_npz(path: Path, graph: Graph) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            feeds = {name: data[name] for name in data.files}
    except (OSError, ValueError) as err:
        raise SparsecError(f"cannot read inputs from {path}: {err}") from None
    expected = [v.name for v in _inputs(graph)]
    missing = [n for n in expected if n not in feeds]
    if missing:
        raise SparsecError(f"{path} lacks input(s) {missing}; the model's inputs are {expected}")
    return {n: feeds[n] for n in expected}


def _inputs(graph: Graph):
    return [v for v in graph.inputs if v.const is None]
