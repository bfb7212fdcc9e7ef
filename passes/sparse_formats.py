"""The sparse weight formats ``sparse-weights`` rewrites into, each with its op and kernel.

A format knows how much of the dense work its kernel does, how to build a random weight of its
kind and the dense and sparse graphs the cost model times, and how to emit its op;
``format_of`` picks the one that fits a weight. A new format is one more class here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sparsec.analysis.sparsity import SparsityInfo
from sparsec.ir.graph import Graph, Node
from sparsec.ir.types import TensorType
from sparsec.ops import DOMAIN
from sparsec.ops.sparse import to_bsr, to_nm

# Block shapes the BSR kernel runs well, best first: R (outputs) is the vector axis.
KERNEL_BLOCKS = ((32, 1), (16, 1), (8, 1), (4, 4))


@dataclass(frozen=True)
class SparseFormat:
    shape: tuple[int, int]  # the block (R outputs x C inputs), or the N:M pattern
    kind = ""  # the rewrite's name: sparse-weights.<kind>
    op_type = ""
    needs_static_rows = False
    extra_attributes = {}  # noqa: RUF012 (read only) more attributes of the op

    @property
    def label(self) -> str:
        return f"{self.shape[0]}x{self.shape[1]}"

    def describe(self) -> str:
        return f"in {self.label} blocks"

    def rows_bucket(self, rows: int) -> int:
        """The row count the cost model measures this format at for ``rows`` rows."""
        from .sparse_cost import row_bucket

        return row_bucket(rows)

    def work(self, info: SparsityInfo) -> float:
        """The fraction of the dense multiply-adds the kernel does on this weight."""
        return 1.0 - info.sparsity

    def random_weight(self, rng: np.random.Generator, out: int, k: int, density: float) -> np.ndarray:
        """An ``[out, in]`` weight of this format at ``density``, zeros where pruning leaves them."""
        r, c = self.shape
        weight = rng.standard_normal((out, k)).astype(np.float32)
        kept = rng.random((out // r, k // c)) < density
        return weight * np.repeat(np.repeat(kept, r, axis=0), c, axis=1)

    def stored(self, out_in: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """The op's constant operands after x, named: the BSR arrays."""
        data, indices, indptr = to_bsr(out_in, self.shape)
        return [("bsr_data", data), ("bsr_indices", indices), ("bsr_indptr", indptr)]

    def attributes(self, out_in: np.ndarray) -> dict:
        return {"block": list(self.shape), "shape": list(out_in.shape), **self.extra_attributes}

    def add_node(self, graph: Graph, x, out_in: np.ndarray, bias, activation: str, name: str, before: Node | None = None) -> Node:
        consts = [graph.add_constant(array, f"{name}_{part}") for part, array in self.stored(out_in)]
        return graph.add_node(self.op_type, [x, *consts, *([bias] if bias is not None else [])],
                              {**self.attributes(out_in), "activation": activation}, domain=DOMAIN, name=name, before=before)

    def calibration_graphs(self, rows: int, out_in: np.ndarray) -> tuple[Graph, Graph]:
        """(the dense op this format replaces, its sparse op) on ``rows`` rows of input x, for the
        cost model to time side by side: here ``x[rows, in] @ W``."""
        dense, x = _calibration_graph("dense", (rows, out_in.shape[1]))
        dense.outputs.append(dense.add_node("MatMul", [x, dense.add_constant(np.ascontiguousarray(out_in.T), "w")]).outputs[0])
        sparse, xs = _calibration_graph("sparse", (rows, out_in.shape[1]))
        sparse.outputs.append(self.add_node(sparse, xs, out_in, None, "none", "sparse").outputs[0])
        return dense, sparse


def _calibration_graph(kind: str, shape: tuple) -> tuple[Graph, object]:
    graph = Graph(f"calibrate_{kind}")
    return graph, graph.add_input("x", TensorType("float32", shape))


class BSR(SparseFormat):
    kind = "bsr"
    op_type = "BlockSparseMatMul"


class CSR(SparseFormat):
    """Unstructured: 1x1 blocks, computed transposed (tokens on the vector axis)."""

    kind = "csr"
    op_type = "BlockSparseMatMul"
    needs_static_rows = True

    def describe(self) -> str:
        return "unstructured"


class ChannelsCSR(CSR):
    """A 1x1 convolution's weight over NCHW activations (``[N, in, pixels]``): the CSR kernel with
    the pixels on the vector axis, no transposes."""

    extra_attributes = {"layout": "channels"}

    @property
    def label(self) -> str:
        return "conv1x1"  # (the cost model's cache key: not CSR's MatMul measurement)

    def rows_bucket(self, rows: int) -> int:
        # The exact pixel count: a network's 1x1 convolutions come in few shapes, and the image
        # size decides the tiles (196 pixels measured as 512 had predicted a 50% layer faster).
        return rows

    def calibration_graphs(self, rows, out_in):
        """A 1x1 Conv over an image of ``rows`` pixels (as square as ``rows`` factors) against the kernel."""
        out, k = out_in.shape
        height = max(d for d in range(1, int(np.sqrt(rows)) + 1) if rows % d == 0)
        dense, x = _calibration_graph("dense", (1, k, height, rows // height))
        w = dense.add_constant(np.ascontiguousarray(out_in.reshape(out, k, 1, 1)), "w")
        dense.outputs.append(dense.add_node("Conv", [x, w], {"kernel_shape": [1, 1]}).outputs[0])
        sparse, xs = _calibration_graph("sparse", (1, k, height, rows // height))
        flat = sparse.add_node("Reshape", [xs, sparse.add_constant(np.array([1, k, rows], np.int64), "flat")]).outputs[0]
        sparse.outputs.append(self.add_node(sparse, flat, out_in, None, "none", "sparse").outputs[0])
        return dense, sparse


class NM(SparseFormat):
    """N:M (2:4, 4:8): each group's kept weights stored compressed with their offsets."""

    kind = "nm"
    op_type = "NMSparseMatMul"

    @property
    def label(self) -> str:
        return f"{self.shape[0]}:{self.shape[1]}"

    def describe(self) -> str:
        return f"{self.label} (N:M)"

    def work(self, info: SparsityInfo) -> float:
        n, m = self.shape
        return n / m  # every group is read as N kept weights, padded with zeros where it has fewer

    def random_weight(self, rng, out, k, density):
        from .pruning import magnitude_prune

        return magnitude_prune(rng.standard_normal((out, k)).astype(np.float32), 0.0, nm=self.shape)

    def stored(self, out_in):
        values, positions = to_nm(out_in, *self.shape)
        return [("nm_values", values), ("nm_positions", positions)]

    def attributes(self, out_in):
        return {"pattern": list(self.shape), "shape": list(out_in.shape)}


def format_of(info: SparsityInfo) -> SparseFormat:
    """The format a weight runs best in: the largest kernel block that holds, else its N:M
    pattern (when that is about all its sparsity), else CSR."""
    block = next((b for b in KERNEL_BLOCKS if b in info.blocks), None)
    if block is not None:
        return BSR(block)
    structure = info.structure
    if ":" in structure:
        n, m = (int(d) for d in structure.split(":"))
        return NM((n, m))
    return CSR((1, 1))
