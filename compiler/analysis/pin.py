"""Pin symbolic input dims to numbers. Many real exports that TVM's importer rejects as given
(Reshape by a computed shape, Expand from a legacy export) import once the dims are known."""

from __future__ import annotations

from ..errors import SparsecError
from ..ir.graph import Graph
from ..ir.types import TensorType


def pin_dims(graph: Graph, dims: dict[str, int] | None = None, shapes: dict[str, list[int]] | None = None) -> int:
    """Replace symbolic dims by name (``dims={"batch": 1}``) or whole input shapes
    (``shapes={"input_ids": [1, 128]}``). Returns the number of dims pinned."""
    pinned = 0
    by_input = {v.name: v for v in graph.inputs}
    for name in shapes or {}:
        if name not in by_input:
            raise SparsecError(f"cannot pin the shape of {name!r}: the model's inputs are {sorted(by_input)}")
    for value in graph.inputs:
        t = value.type
        if not isinstance(t, TensorType):
            continue
        if shapes and value.name in shapes:
            new = tuple(int(d) for d in shapes[value.name])
            if t.shape is not None and (len(new) != len(t.shape) or any(isinstance(o, int) and o != n for o, n in zip(t.shape, new))):
                raise SparsecError(f"cannot pin {value.name!r} to {list(new)}: the model declares {t}")
        elif dims and t.shape is not None:
            new = tuple(dims.get(d, d) if isinstance(d, str) else d for d in t.shape)
        else:
            continue
        pinned += sum(1 for o, n in zip(t.shape or new, new) if not isinstance(o, int))
        value.type = TensorType(t.dtype, new)
    # Downstream types that mention the old symbols are stale now: forget them so inference redoes them.
    if pinned:
        for sub in graph.all_graphs():
            for node in sub.nodes:
                for out in node.outputs:
                    if isinstance(out.type, TensorType) and out.type.shape is not None and any(not isinstance(d, int) for d in out.type.shape):
                        out.type = None
    return pinned
