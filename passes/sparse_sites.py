"""Where ``sparse-weights`` can put a sparse kernel: dense ops with a constant weight, by op type.

Each site finder takes a node and returns a ``Site`` (the weight as ``[out, in]``, its bias, the
activation rows), a reason (str) when the op has a constant weight but is not in the form the
kernels compute, or None when the op is nothing of the kind. ``Site.rewrite`` replaces the op
(and the bias Add and ReLU that follow it alone) by the sparse op of the chosen format.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sparsec.ir.graph import Node, Value
from sparsec.ir.types import TensorType
from sparsec.ops import DOMAIN

from .sparse_formats import ChannelsCSR, SparseFormat


@dataclass
class Site:
    node: Node
    out_in: np.ndarray  # the weight as [out, in]
    bias: np.ndarray | None  # [out], from the op itself (Gemm's C, Conv's B)
    rows: int | None  # activation rows (pixels for a convolution) when static
    channels_first: bool = False  # a 1x1 convolution: x [N, in, H, W], kernel over the pixels

    def fixed_format(self) -> SparseFormat | None:
        """The format this site must use whatever the weight's structure (None: the best that fits)."""
        return ChannelsCSR((1, 1)) if self.channels_first else None

    def rewrite(self, fmt: SparseFormat) -> None:
        node, g = self.node, self.node.graph
        n = int(self.out_in.shape[0])
        absorbed, bias, activation = _epilogue(node, n, self.bias, allow_add=not self.channels_first)
        if bias is not None:
            bias = g.add_constant(np.ascontiguousarray(bias, np.float32), f"{node.name}_bias")
        x = node.input(0)
        if self.channels_first:
            batch, channels, height, width = x.type.shape
            x = g.add_node("Reshape", [x, g.add_constant(np.array([batch, channels, height * width], np.int64), f"{node.name}_flat")],
                           name=f"{node.name}_flatten", before=node).outputs[0]
            x.type = TensorType("float32", (batch, channels, height * width))
        sparse = fmt.add_node(g, x, self.out_in, bias, activation, f"{node.name}_{fmt.kind}", before=node)
        result = sparse.outputs[0]
        last = absorbed[-1] if absorbed else node
        if self.channels_first:
            result.type = TensorType("float32", (batch, n, height * width))
            result = g.add_node("Reshape", [result, g.add_constant(np.array([batch, n, height, width], np.int64), f"{node.name}_image")],
                                name=f"{node.name}_unflatten", before=node).outputs[0]
        result.type = last.outputs[0].type
        last.outputs[0].replace_all_uses_with(result)
        for dead in reversed([node, *absorbed]):
            g.remove_node(dead)
        g.remove_unused_constants()
        g.root.opset_imports.setdefault(DOMAIN, 1)


SiteFinder = Callable[[Node], "Site | str | None"]
SITES: dict[str, SiteFinder] = {}


def site_of(node: Node) -> Site | str | None:
    if node.domain not in ("", "ai.onnx") or node.op_type not in SITES:
        return None
    weight = node.input(1)
    if weight is None or weight.const is None or weight.const.dtype.name != "float32":
        return None
    return SITES[node.op_type](node)


def _finds(op_type: str):
    def register(fn: SiteFinder) -> SiteFinder:
        SITES[op_type] = fn
        return fn

    return register


@_finds("MatMul")
def _matmul(node: Node) -> Site | None:
    weight = node.input(1).const
    return Site(node, weight.T, None, _rows(node.input(0))) if weight.ndim == 2 else None


@_finds("Gemm")
def _gemm(node: Node) -> Site | str | None:
    """``x @ W + C`` or ``x @ W.T + C`` (how torch exports ``nn.Linear`` on 2-D inputs)."""
    weight = node.input(1).const
    if weight.ndim != 2:
        return None
    out_in = weight if node.attr("transB", 0) else weight.T
    if node.attr("transA", 0) or node.attr("alpha", 1.0) != 1.0:
        return "the Gemm has transA or alpha != 1"
    beta = node.attr("beta", 1.0)  # beta 0: C is ignored (ORT does not read it, inf and NaN included)
    bias = _bias_row(node.input(2) if len(node.inputs) > 2 and beta != 0.0 else None, out_in.shape[0], beta)
    if isinstance(bias, str):
        return f"the Gemm's C {bias}"
    return Site(node, out_in, bias, _rows(node.input(0)))


@_finds("Conv")
def _conv(node: Node) -> Site | str | None:
    """A 1x1 convolution over a static NCHW input: stride 1, no padding, one group."""
    weight = node.input(1).const
    if weight.ndim != 4:
        return None
    if weight.shape[2:] != (1, 1):
        return "only 1x1 convolutions have a sparse kernel"
    if node.attr("group", 1) != 1 or any(s != 1 for s in node.attr("strides", [1, 1])) or \
            any(p != 0 for p in node.attr("pads", [0, 0, 0, 0])) or any(d != 1 for d in node.attr("dilations", [1, 1])) or \
            node.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID", b"NOTSET", b"VALID"):
        return "the 1x1 convolution has groups, strides, padding or dilations"
    x = node.input(0).type
    if not isinstance(x, TensorType) or x.shape is None or len(x.shape) != 4 or not all(isinstance(d, int) for d in x.shape):
        return "the 1x1 convolution's input is not a static NCHW shape; pin the model's dims (dims= / --dim)"
    out = weight.shape[0]
    bias = _bias_row(node.input(2) if len(node.inputs) > 2 else None, out, 1.0)
    if isinstance(bias, str):
        return f"the convolution's bias {bias}"
    batch, _, height, width = x.shape
    return Site(node, weight.reshape(out, -1), bias, batch * height * width, channels_first=True)


def _bias_row(value: Value | None, n: int, scale: float) -> np.ndarray | str | None:
    if value is None:
        return None
    if value.const is not None and value.const.size == 1 and value.const.ndim <= 2:  # one bias for all
        return np.full(n, np.float32(scale) * value.const.ravel()[0], np.float32)
    if value.const is None or value.const.size != n or value.const.shape[-1:] != (n,) or value.const.ndim > 2:
        return "is not a constant row of biases"
    return (np.float32(scale) * value.const.reshape(n)).astype(np.float32)


def _rows(x: Value) -> int | None:
    """Activation rows (the product of x's leading dims) when static."""
    t = x.type
    if isinstance(t, TensorType) and t.shape is not None and all(isinstance(d, int) for d in t.shape[:-1]):
        return int(np.prod(t.shape[:-1], dtype=np.int64))
    return None


def _sole_consumer(value: Value, op_type: str) -> Node | None:
    users = value.consumers()
    if len(users) == 1 and not value.is_graph_output and users[0].op_type == op_type and users[0].domain in ("", "ai.onnx"):
        return users[0]
    return None


def _epilogue(node: Node, n: int, bias: np.ndarray | None, allow_add: bool) -> tuple[list[Node], np.ndarray | None, str]:
    """The bias Add (a constant [N] that does not raise the rank; only when the op has no bias of
    its own) and ReLU that follow the op alone: folded into the kernel's write-back, so the
    output is written once. Returns (absorbed nodes, bias, activation)."""
    absorbed, activation, out = [], "none", node.outputs[0]
    add = _sole_consumer(out, "Add") if bias is None and allow_add else None
    rank = len(out.type.shape) if isinstance(out.type, TensorType) and out.type.shape is not None else 0
    if add is not None:
        other = add.input(1) if add.input(0) is out else add.input(0)
        if other is not None and other.const is not None and other.const.dtype.name == "float32" and other.const.size == n \
                and other.const.shape[-1:] == (n,) and other.const.ndim <= rank:
            absorbed.append(add)
            bias, out = other.const.reshape(n), add.outputs[0]
    relu = _sole_consumer(out, "Relu")
    if relu is not None:
        absorbed.append(relu)
        activation = "relu"
    return absorbed, bias, activation
