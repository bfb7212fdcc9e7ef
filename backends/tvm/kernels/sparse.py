"""CPU kernels of ``sparsec.BlockSparseMatMul``: BSR weight, R outputs x C inputs per block
(1x1 blocks: CSR, computed transposed; see ``csr_transposed_kernel``).

Each task owns one block row (R output features); for every tile of MR activation rows it keeps
an MR x R accumulator in registers, walks only the non-zero blocks of that row (their inputs
gathered by ``indices``) and adds the bias as it writes the tile back. R is the vector axis, so
R >= the vector width (16x1, 32x1 blocks) runs at full vector speed; zero blocks cost nothing.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.script import tirx as T

from ....ir.graph import Node
from ..lower import register_lowering
from ..targets import host_vector_lanes, host_vector_registers


def row_tile(r: int) -> int:
    """Activation rows per register tile (MR) for blocks of R outputs: MR x R/lanes accumulators
    within 3/4 of the vector registers, at most 8 rows. AVX-512: 8 rows for 32x1 blocks. AVX2:
    3 rows for 32x1 blocks, 6 for 16x1 (8 rows of 32x1 needed 32 of its 16 registers and spilled:
    90% 32x1 FFN at 32 rows, 3.4x ORT with 8 rows, 5.2x with 3, measured side by side on Zen 3).
    3 x 32 with the block's 4 vectors and a broadcast still needs 17 registers and LLVM spills two
    accumulators, but tiles that fit (2 rows x 32, 6 rows x 16 outputs) measured no faster."""
    vectors = max(1, r // host_vector_lanes())
    return max(1, min(8, host_vector_registers() * 3 // 4 // vectors))


def bsr_kernel(m, k: int, n: int, block: tuple[int, int], nnzb: int, relu: bool = False):
    """``m`` rows: an int, or a ``tirx.Var`` for a symbolic row count. (``s_tir=True`` keeps the
    buffers free of TVM 0.27's layouts, which a pass would rebuild with a fresh copy of m.)"""
    r, c = block
    mr = row_tile(r)
    block_rows = n // r
    # Accumulators live in a per-task buffer declared once per parallel chunk: declared inside
    # the parallel loop body it would be a workspace allocation per iteration.
    chunks = min(block_rows, 64)
    per_chunk = (block_rows + chunks - 1) // chunks

    # The epilogue: bias, then ReLU as max(., 0), or max(., -inf) (a no-op) without one.
    low = T.float32(0) if relu else T.float32(float("-inf"))

    @T.prim_func(private=True, s_tir=True)
    def kernel(x: T.Buffer((m, k), "float32"), data: T.Buffer((nnzb, c, r), "float32"), indices: T.Buffer((nnzb,), "int32"),
               indptr: T.Buffer((block_rows + 1,), "int32"), bias: T.Buffer((n,), "float32"), y: T.Buffer((m, n), "float32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        for chunk in T.parallel(chunks):
            acc = T.decl_buffer((mr, r), "float32", scope="local")
            for rb_local in range(per_chunk):
                rb = T.meta_var(chunk * per_chunk + rb_local)
                if rb < block_rows:
                    for mo in range(m // mr):
                        for i in T.unroll(mr):
                            for j in T.vectorized(r):
                                acc[i, j] = T.float32(0)
                        for p in range(indptr[rb], indptr[rb + 1]):
                            for kk in range(c):
                                for i in T.unroll(mr):
                                    for j in T.vectorized(r):
                                        acc[i, j] = acc[i, j] + x[mo * mr + i, T.Cast("int64", indices[p]) * c + kk] * data[p, kk, j]
                        for i in T.unroll(mr):
                            for j in T.vectorized(r):
                                y[mo * mr + i, rb * r + j] = T.max(acc[i, j] + bias[rb * r + j], low)
                    for row in range(m - m // mr * mr):  # the rows left over, one at a time
                        for j in T.vectorized(r):
                            acc[0, j] = T.float32(0)
                        for p in range(indptr[rb], indptr[rb + 1]):
                            for kk in range(c):
                                for j in T.vectorized(r):
                                    acc[0, j] = acc[0, j] + x[m // mr * mr + row, T.Cast("int64", indices[p]) * c + kk] * data[p, kk, j]
                        for j in T.vectorized(r):
                            y[m // mr * mr + row, rb * r + j] = T.max(acc[0, j] + bias[rb * r + j], low)

    return kernel


def csr_transposed_kernel(m: int, k: int, n: int, nnz: int, relu: bool = False, tile: int = 64):
    # (m static: the token axis is the vector axis and its tiling is decided here)
    """Unstructured (1x1 blocks, CSR): ``y.T[n, :] = sum_p data[p] * x.T[indices[p], :]``.

    With the activations transposed, every non-zero scales one contiguous row of x.T and the
    tokens are the vector axis (the stores are contiguous too), so a 1x1 block costs a
    broadcast and a few vector FMAs instead of a gather per token."""
    low = T.float32(0) if relu else T.float32(float("-inf"))
    mt = min(m, tile)
    full, tail = m // mt, m % mt
    chunks = min(n, 128)
    per_chunk = (n + chunks - 1) // chunks

    @T.prim_func(private=True, s_tir=True)
    def kernel(xt: T.Buffer((k, m), "float32"), data: T.Buffer((nnz, 1, 1), "float32"), indices: T.Buffer((nnz,), "int32"),
               indptr: T.Buffer((n + 1,), "int32"), bias: T.Buffer((n,), "float32"), yt: T.Buffer((n, m), "float32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        for chunk in T.parallel(chunks):
            acc = T.decl_buffer((mt,), "float32", scope="local")
            for local_row in range(per_chunk):
                row = T.meta_var(chunk * per_chunk + local_row)
                if row < n:
                    for t in range(full):
                        for j in T.vectorized(mt):
                            acc[j] = T.float32(0)
                        for p in range(indptr[row], indptr[row + 1]):
                            for j in T.vectorized(mt):
                                acc[j] = acc[j] + data[p, 0, 0] * xt[T.Cast("int64", indices[p]), t * mt + j]
                        for j in T.vectorized(mt):
                            yt[row, t * mt + j] = T.max(acc[j] + bias[row], low)
                    for j in range(tail):
                        acc[j] = T.float32(0)
                        for p in range(indptr[row], indptr[row + 1]):
                            acc[j] = acc[j] + data[p, 0, 0] * xt[T.Cast("int64", indices[p]), full * mt + j]
                        yt[row, full * mt + j] = T.max(acc[j] + bias[row], low)

    return kernel


@register_lowering("sparsec", "BlockSparseMatMul")
def lower_block_sparse_matmul(bb: relax.BlockBuilder, node: Node, inputs: list, attrs: dict):
    x, data, indices, indptr = inputs[:4]
    out, k = (int(d) for d in node.attr("shape"))
    block = tuple(int(d) for d in node.attr("block"))
    bias = inputs[4] if len(inputs) > 4 and inputs[4] is not None else relax.const(np.zeros(out, np.float32))
    nnzb = int(node.input(2).const.shape[0])
    lead = list(x.ty.shape.values[:-1])
    static = all(isinstance(d, tvm.tirx.IntImm) for d in lead)
    rows = int(np.prod([int(d) for d in lead])) if static else None
    if rows is None:  # symbolic: the BSR kernel takes any row count (CSR needs it static)
        count = lead[0]
        for d in lead[1:]:
            count = count * d
        flat = x if len(lead) == 1 else bb.normalize(relax.op.reshape(x, [count, k]))
        m_var = tvm.tirx.Var("m", "int64")
        kernel = bb.add_func(bsr_kernel(m_var, k, out, block, nnzb, node.attr("activation", "none") == "relu"),
                             f"bsr_matmul_dyn_{k}x{out}_{block[0]}x{block[1]}")
        y = bb.normalize(relax.call_tir(kernel, [flat, data, indices, indptr, bias], relax.TensorType([count, out], "float32")))
        return y if len(lead) == 1 else bb.normalize(relax.op.reshape(y, [*lead, out]))
    flat = x if len(lead) == 1 else bb.normalize(relax.op.reshape(x, [rows, k]))
    relu = node.attr("activation", "none") == "relu"
    suffix = "_relu" if relu else ""
    if block == (1, 1):
        kernel = bb.add_func(csr_transposed_kernel(rows, k, out, nnzb, relu), f"csr_matmul_{rows}x{k}x{out}{suffix}")
        xt = bb.normalize(relax.op.permute_dims(flat, [1, 0]))
        yt = bb.normalize(relax.call_tir(kernel, [xt, data, indices, indptr, bias], relax.TensorType([out, rows], "float32")))
        y = bb.normalize(relax.op.permute_dims(yt, [1, 0]))
    else:
        kernel = bb.add_func(bsr_kernel(rows, k, out, block, nnzb, relu),
                             f"bsr_matmul_{rows}x{k}x{out}_{block[0]}x{block[1]}{suffix}")
        y = bb.normalize(relax.call_tir(kernel, [flat, data, indices, indptr, bias], relax.TensorType([rows, out], "float32")))
    if len(lead) != 1:
        y = bb.normalize(relax.op.reshape(y, [*lead, out]))
    return y
