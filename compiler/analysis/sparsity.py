"""Sparsity structure of constant weights: how many zeros, and in which pattern.

Weights are described as ``[out, in]`` (output features x input features, as torch stores a
Linear layer): an ONNX MatMul weight ``B[K, N]`` is transposed for this, a Gemm weight with
``transB=1`` is already so. A block shape ``RxC`` holds when every RxC tile (R outputs x C inputs)
is either all zero or kept whole, so a block-sparse kernel skips exactly the zero tiles; ``16x1``
blocks (16 output features sharing one input) vectorise along the outputs. ``N:M`` holds when
every run of M consecutive inputs of an output row has at most N non-zeros.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

# Block shapes (outputs x inputs) worth a kernel, largest first within each orientation.
BLOCK_SHAPES = ((32, 1), (16, 1), (8, 1), (4, 4), (1, 16), (1, 8), (1, 4))
NM_PATTERNS = ((2, 4), (4, 8))


@dataclass
class SparsityInfo:
    shape: tuple[int, int]  # [out, in]
    sparsity: float  # fraction of zeros
    blocks: list[tuple[int, int]] = field(default_factory=list)  # block shapes that hold
    nm: list[tuple[int, int]] = field(default_factory=list)  # N:M patterns that hold

    @property
    def structure(self) -> str:
        """The most useful description: the largest block, else N:M, else unstructured."""
        if self.sparsity == 0.0:
            return "dense"
        if self.blocks:
            r, c = self.blocks[0]
            return f"block {r}x{c}"
        # N:M describes a weight only when that is about all its sparsity (a 90%-sparse matrix
        # may satisfy 4:8 by chance; a 2:4 kernel would then do 5x the necessary work).
        fitting = [(n, m) for n, m in self.nm if self.sparsity <= 1 - n / m + 0.05]
        if fitting:
            n, m = fitting[0]
            return f"{n}:{m}"
        return "unstructured"

    def to_dict(self) -> dict:
        data = asdict(self)
        data["structure"] = self.structure
        return data


def block_mask(weight: np.ndarray, block: tuple[int, int]) -> np.ndarray | None:
    """``[out / R, in / C]`` booleans, True where the tile has a non-zero; None if R, C do not divide."""
    rows, cols = weight.shape
    r, c = block
    if rows % r or cols % c:
        return None
    return (weight.reshape(rows // r, r, cols // c, c) != 0).any(axis=(1, 3))


def block_holds(weight: np.ndarray, block: tuple[int, int]) -> bool:
    """Every kept tile is fully dense (so the zeros are exactly the skipped tiles)."""
    mask = block_mask(weight, block)
    if mask is None:
        return False
    r, c = block
    return int(mask.sum()) * r * c == int(np.count_nonzero(weight))


def nm_holds(weight: np.ndarray, n: int, m: int) -> bool:
    rows, cols = weight.shape
    if cols % m:
        return False
    return bool(((weight.reshape(rows, cols // m, m) != 0).sum(axis=2) <= n).all())


def analyze(weight: np.ndarray) -> SparsityInfo:
    """Sparsity and structure of a 2-D ``[out, in]`` weight."""
    if weight.ndim != 2:
        raise ValueError(f"expected a 2-D [out, in] weight, got shape {list(weight.shape)}")
    nonzero = int(np.count_nonzero(weight))
    sparsity = 1.0 - nonzero / max(weight.size, 1)
    info = SparsityInfo(tuple(int(d) for d in weight.shape), round(sparsity, 6))
    if nonzero == weight.size or nonzero == 0:
        return info
    info.blocks = [b for b in BLOCK_SHAPES if b != (1, 1) and block_holds(weight, b)]
    info.nm = [(n, m) for n, m in NM_PATTERNS if nm_holds(weight, n, m)]
    return info


def out_in_weight(op_type: str, weight: np.ndarray, attrs: dict) -> np.ndarray | None:
    """The weight of a MatMul (``B[K, N]``), Gemm (``transB``) or Conv (``[out, in, kh, kw]``,
    seen as ``[out, in * kh * kw]``: the im2col view, so 1x1 convolutions are plain matrices) as
    ``[out, in]``; None otherwise."""
    if op_type == "Conv" and weight.ndim >= 3:
        return weight.reshape(weight.shape[0], -1)
    if weight.ndim != 2:
        return None
    if op_type == "MatMul":
        return weight.T
    if op_type == "Gemm":
        return weight if attrs.get("transB", 0) else weight.T
    return None
