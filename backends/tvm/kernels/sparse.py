"""CPU kernels of ``sparsec.BlockSparseMatMul``: BSR weight, R outputs x C inputs per block
(1x1 blocks: CSR, computed transposed; see ``csr_transposed_kernel``).

Each task owns one block row (R output features); for every tile of MR activation rows it keeps
an MR x R accumulator in registers, walks only the non-zero blocks of that row (their inputs
gathered by ``indices``) and adds the bias as it writes the tile back. R is the vector axis, so
R >= the vector width (16x1, 32x1 blocks) runs at full vector speed; zero blocks cost nothing.
"""

from __future__ import annotations

import os

import numpy as np
import tvm
from tvm import relax
from tvm.script import tirx as T

from ....errors import CompileError
from ....ir.graph import Node
from ..lower import CPU_TARGETS, register_lowering
from ..targets import host_vector_lanes, host_vector_registers


def row_tile(r: int, lanes: int | None = None, registers: int | None = None) -> int:
    """Activation rows per register tile (MR) for blocks of R outputs: the MR x R/lanes
    accumulators, the block's R/lanes vectors and a broadcast must fit the vector registers
    (at most 8 rows). AVX-512: 8 rows. AVX2: 2 rows for 32x1 blocks, 6 for 16x1. On AVX2 the
    3 x 32 tile (17 registers) spilled two accumulators into a store-to-load chain: the 90% 32x1
    FFN at 32 rows ran 0.88 ms with it and 0.69 ms with 2 x 32, side by side on Zen 3."""
    lanes = lanes or host_vector_lanes()
    registers = registers or host_vector_registers()
    vectors = max(1, r // lanes)
    return max(1, min(8, (registers - 1 - vectors) // vectors))


def _epilogue(relu: bool):
    """What is written after the bias: ReLU as max(., 0), or the value itself. (Not max(., -inf):
    the C code generator prints that constant as an undeclared ``inff``.)"""
    return (lambda v: T.max(v, T.float32(0))) if relu else (lambda v: v)


def row_tiles(m, mr: int) -> tuple:
    """How ``m`` rows (an int, or a symbolic expression) split into register tiles of ``mr``:
    (rows in full tiles, rows of the tail tile, tail tiles (0 or 1), rows left one at a time).
    Rows past the last full tile: with m known, one unrolled tile of m % mr rows (a row at a
    time ran 2 of 32 rows at a third of the speed); with m symbolic, a row at a time."""
    full = m // mr * mr
    if isinstance(m, int):
        return full, max(1, m % mr), int(m % mr > 0), 0
    return full, 1, 0, m - full


def balanced_chunks(items: int, most: int) -> tuple[int, int]:
    """(chunks, items per chunk): at most ``most`` chunks, each but possibly the last full. The
    thread pool hands each thread a contiguous run of chunks, so empty trailing chunks would
    load the threads unevenly (96 block rows as 64 chunks of 2: 48 of them do all the work, and
    the first thread gets 64 rows to the second's 32)."""
    per_chunk = -(-items // most)
    return -(-items // per_chunk), per_chunk


# Bytes of a row tile's activations per K block of the BSR kernel (see bsr_k_blocks): most of a
# 32 KiB L1, the rest for the block rows' weights. (12 KiB blocks measured slower.)
BSR_X_BYTES = 24 * 1024
# Bytes of the partial sums a K-blocked BSR task keeps between K blocks (its block rows x the
# rows x R, one buffer per task), and the fewest block rows per task that make K blocks worth it.
BSR_SUMS_BYTES = 192 * 1024
MIN_TASK_ROWS = 4


def bsr_k_blocks(m: int, k: int, n: int, block: tuple[int, int]) -> int:
    """K blocks of the BSR kernel for a static row count ``m`` (1: none). Each non-zero block
    broadcasts one activation per row of the tile from a column of its own, so a tile reads MR
    rows of x at scattered columns: at K = 3072 (the FFN's second layer, 6-row tiles) 74 KB of
    x, beyond L1. In K blocks whose slice of the tile's rows fits BSR_X_BYTES, the slice stays in
    L1 while every block row of the task passes over it (see bsr_kernel). 1 when the tasks
    (bsr_tasks) would hold fewer than MIN_TASK_ROWS block rows each (too little reuse)."""
    r, c = block
    columns = BSR_X_BYTES // (4 * row_tile(r)) // c * c
    blocks = -(-k // columns) if columns else 1
    if blocks <= 1 or bsr_tasks(m, n // r, r, blocks)[1] < min(MIN_TASK_ROWS, n // r):
        return 1
    return blocks


def _threads() -> int:
    """The cores this process may run on (TVM's pool size by default)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def bsr_tasks(m, block_rows: int, r: int, k_blocks: int) -> tuple[int, int]:
    """(tasks, block rows per task) of the BSR kernel. Unblocked: up to 64 tasks, each block
    row's weights reused by every row tile. K-blocked: two per core, so that each task's slice of
    x is reused by many block rows (48 block rows of the FFN's second layer, 128 rows: 0.90 ->
    0.67 ms in 4 tasks; 8 tasks gained little, 48 nothing), or more when the partial sums of
    that many block rows (rows x R each) would not fit BSR_SUMS_BYTES."""
    if k_blocks == 1:
        return balanced_chunks(block_rows, 64)
    most_rows = max(1, BSR_SUMS_BYTES // (4 * m * r))
    return balanced_chunks(block_rows, max(2 * _threads(), -(-block_rows // most_rows)))


def bsr_block_pointers(indices: np.ndarray, indptr: np.ndarray, k: int, block: tuple[int, int], blocks: int) -> np.ndarray:
    """``kptr[rb * (blocks + 1) + t]``: the first non-zero block of block row rb whose input
    column is at or past K block t (``k / blocks`` columns, a multiple of the block's C), for t
    in 0..blocks; the block row's end at t = blocks. Indices sorted within each block row."""
    c = block[1]
    per_block = -(-k // blocks)
    columns = -(-per_block // c) * c  # whole blocks of C inputs
    starts = np.arange(blocks + 1) * columns
    starts[-1] = k
    rows = len(indptr) - 1
    kptr = np.empty((rows, blocks + 1), np.int32)
    for rb in range(rows):
        cols = indices[indptr[rb]:indptr[rb + 1]].astype(np.int64) * c
        kptr[rb] = indptr[rb] + np.searchsorted(cols, starts, side="left")
    kptr[:, 0], kptr[:, -1] = indptr[:-1], indptr[1:]  # (whole rows whatever the order: one block)
    return kptr.reshape(-1)


def bsr_kernel(m, k: int, n: int, block: tuple[int, int], nnzb: int, relu: bool = False, k_blocks: int = 1):
    """``m`` rows: an int, or a ``tirx.Var`` for a symbolic row count. (``s_tir=True`` keeps the
    buffers free of TVM 0.27's layouts, which a pass would rebuild with a fresh copy of m.)
    The kernel reads the block rows' non-zero ranges per K block from ``kptr`` (see
    bsr_block_pointers; with one K block, kptr is [indptr[rb], indptr[rb + 1]] per block row).
    K blocks need a static ``m``."""
    r, c = block
    mr = row_tile(r)
    block_rows = n // r
    blocked = k_blocks > 1
    assert not blocked or isinstance(m, int), "K blocks keep partial sums for a static row count"
    # Accumulators live in a per-task buffer declared once per parallel chunk: declared inside
    # the parallel loop body it would be a workspace allocation per iteration.
    chunks, per_chunk = bsr_tasks(m, block_rows, r, k_blocks)
    stride = k_blocks + 1
    epilogue = _epilogue(relu)
    full, tail, tail_tiles, single_rows = row_tiles(m, mr)

    @T.macro
    def tile(x, data, indices, kptr, bias, y, acc, sums, rb, rb_local, base, rows, kb):
        # `rows` (a Python int) activation rows from `base`, block row rb, K block kb: an
        # accumulator tile; with K blocks, the sums carry over in `sums` between them.
        if blocked:
            for i in T.unroll(rows):
                for j in T.vectorized(r):
                    acc[i, j] = T.if_then_else(kb == 0, T.float32(0), sums[rb_local, base + i, j])
        else:
            for i in T.unroll(rows):
                for j in T.vectorized(r):
                    acc[i, j] = T.float32(0)
        for p in range(kptr[rb * stride + kb], kptr[rb * stride + kb + 1]):
            for kk in range(c):
                for i in T.unroll(rows):
                    for j in T.vectorized(r):
                        acc[i, j] = acc[i, j] + x[base + i, T.Cast("int64", indices[p]) * c + kk] * data[p, kk, j]
        if blocked:
            if kb == k_blocks - 1:
                for i in T.unroll(rows):
                    for j in T.vectorized(r):
                        y[base + i, rb * r + j] = epilogue(acc[i, j] + bias[rb * r + j])
            else:
                for i in T.unroll(rows):
                    for j in T.vectorized(r):
                        sums[rb_local, base + i, j] = acc[i, j]
        else:
            for i in T.unroll(rows):
                for j in T.vectorized(r):
                    y[base + i, rb * r + j] = epilogue(acc[i, j] + bias[rb * r + j])

    @T.macro
    def task_rows(x, data, indices, kptr, bias, y, acc, sums, chunk, base, rows, kb):
        # One tile of `rows` rows at `base` for every block row of the task.
        for rb_local in range(per_chunk):
            rb = T.meta_var(chunk * per_chunk + rb_local)
            if rb < block_rows:
                tile(x, data, indices, kptr, bias, y, acc, sums, rb, rb_local, base, rows, kb)

    @T.prim_func(private=True, s_tir=True)
    def kernel(x: T.Buffer((m, k), "float32"), data: T.Buffer((nnzb, c, r), "float32"), indices: T.Buffer((nnzb,), "int32"),
               kptr: T.Buffer((block_rows * stride,), "int32"), bias: T.Buffer((n,), "float32"), y: T.Buffer((m, n), "float32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        for chunk in T.parallel(chunks):
            acc = T.decl_buffer((mr, r), "float32", scope="local")
            sums = T.decl_buffer((per_chunk if blocked else 1, m if blocked else 1, r), "float32", scope="local")
            if blocked:
                # K blocks, then row tiles, then the task's block rows: a tile's slice of x stays
                # in L1 while the block rows pass over it.
                for kb in range(k_blocks):
                    for mo in range(m // mr):
                        task_rows(x, data, indices, kptr, bias, y, acc, sums, chunk, mo * mr, mr, kb)
                    for _ in range(tail_tiles):
                        task_rows(x, data, indices, kptr, bias, y, acc, sums, chunk, full, tail, kb)
            else:
                # Block rows outermost: a block row's weights stay in L1 while every row tile passes.
                for rb_local in range(per_chunk):
                    rb = T.meta_var(chunk * per_chunk + rb_local)
                    if rb < block_rows:
                        for mo in range(m // mr):
                            tile(x, data, indices, kptr, bias, y, acc, sums, rb, rb_local, mo * mr, mr, 0)
                        for _ in range(tail_tiles):  # static m: the rows left over as one smaller tile
                            tile(x, data, indices, kptr, bias, y, acc, sums, rb, rb_local, full, tail, 0)
                        for row in range(single_rows):  # symbolic m: the rows left over, one at a time
                            tile(x, data, indices, kptr, bias, y, acc, sums, rb, rb_local, full + row, 1, 0)

    return kernel


# Multiply-adds (non-zeros x tokens) below which the CSR kernel runs on the calling thread: the
# pool's wake-up costs more than the second core saves. Kernel alone on Zen 3, 2 threads against
# 1, side by side: 1.1M 0.135 vs 0.087 ms (a 1x1 conv 96 -> 576 at 14x14, 90% zeros), 3.2M
# 0.236 vs 0.228, 7.5M 0.38 vs 0.82.
CSR_SERIAL_WORK = 1 << 21


def csr_transposed_kernel(m: int, k: int, n: int, nnz: int, relu: bool = False, tile: int = 64, batch: int = 1):
    # (m static: the token axis is the vector axis and its tiling is decided here)
    """Unstructured (1x1 blocks, CSR): ``y.T[b, n, :] = sum_p data[p] * x.T[b, indices[p], :]``.

    With the activations transposed, every non-zero scales one contiguous row of x.T and the
    tokens are the vector axis (the stores are contiguous too), so a 1x1 block costs a
    broadcast and a few vector FMAs instead of a gather per token. A 1x1 convolution's NCHW
    input already is x.T, one ``[channels, pixels]`` matrix per image of the ``batch``."""
    epilogue = _epilogue(relu)
    mt = min(m, tile)
    full, tail = m // mt, m % mt
    tail_tiles = int(tail > 0)
    chunks, per_chunk = balanced_chunks(n, 128)
    rows_loop = T.serial if nnz * m * batch < CSR_SERIAL_WORK else T.parallel

    @T.macro
    def pixels(xt, data, indices, indptr, bias, yt, acc, b, row, start, width):
        # `width` (a Python int) tokens from `start`: one vector tile (the last may be narrower,
        # still a vector: LLVM splits an odd width into 8-, 4- and 1-lane pieces)
        for j in T.vectorized(width):
            acc[j] = T.float32(0)
        for p in range(indptr[row], indptr[row + 1]):
            for j in T.vectorized(width):
                acc[j] = acc[j] + data[p, 0, 0] * xt[b, T.Cast("int64", indices[p]), start + j]
        for j in T.vectorized(width):
            yt[b, row, start + j] = epilogue(acc[j] + bias[row])

    @T.prim_func(private=True, s_tir=True)
    def kernel(xt: T.Buffer((batch, k, m), "float32"), data: T.Buffer((nnz, 1, 1), "float32"), indices: T.Buffer((nnz,), "int32"),
               indptr: T.Buffer((n + 1,), "int32"), bias: T.Buffer((n,), "float32"), yt: T.Buffer((batch, n, m), "float32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        for chunk in rows_loop(chunks):
            acc = T.decl_buffer((mt,), "float32", scope="local")
            for local_row in range(per_chunk):
                row = T.meta_var(chunk * per_chunk + local_row)
                if row < n:
                    for b in range(batch):
                        for t in range(full):
                            pixels(xt, data, indices, indptr, bias, yt, acc, b, row, t * mt, mt)
                        for _ in range(tail_tiles):
                            pixels(xt, data, indices, indptr, bias, yt, acc, b, row, full * mt, max(tail, 1))

    return kernel


def _gpu_loop(bind: bool):
    """``T.thread_binding`` loops, or (``bind=False``) the same loops serial, so that a GPU
    kernel's index arithmetic can be run and checked on the CPU where no GPU is lent."""
    if bind:
        return lambda extent, thread: T.thread_binding(extent, thread=thread)
    return lambda extent, thread: T.serial(extent)


def bsr_kernel_cuda(m, k: int, n: int, block: tuple[int, int], nnzb: int, relu: bool = False, bind: bool = True):
    """The CUDA kernel for any block shape (1x1 too): a thread per output element. A thread
    block owns one block row of R outputs (threadIdx.x) for TY activation rows (threadIdx.y), so
    a warp reads the R floats of each stored block side by side (coalesced, for 32x1 blocks one
    transaction per block) while every thread of the warp reads the same activation (a broadcast).
    Compiled here; it runs where a GPU is lent (not measured yet). ``bind=False`` makes the
    thread loops serial (a CPU build of the same arithmetic, for tests)."""
    r, c = block
    loop = _gpu_loop(bind)
    block_rows = n // r
    ty = max(1, min(64, 256 // r))
    tiles = (m + ty - 1) // ty

    @T.prim_func(private=True, s_tir=True)
    def kernel(x: T.Buffer((m, k), "float32"), data: T.Buffer((nnzb, c, r), "float32"), indices: T.Buffer((nnzb,), "int32"),
               indptr: T.Buffer((block_rows + 1,), "int32"), bias: T.Buffer((n,), "float32"), y: T.Buffer((m, n), "float32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        for rb in loop(block_rows, "blockIdx.x"):
            for tile in loop(tiles, "blockIdx.y"):
                for ti in loop(ty, "threadIdx.y"):
                    for j in loop(r, "threadIdx.x"):
                        acc = T.decl_buffer((1,), "float32", scope="local")
                        if tile * ty + ti < m:
                            acc[0] = T.float32(0)
                            for p in range(indptr[rb], indptr[rb + 1]):
                                for kk in range(c):
                                    acc[0] = acc[0] + x[tile * ty + ti, T.Cast("int64", indices[p]) * c + kk] * data[p, kk, j]
                            y[tile * ty + ti, rb * r + j] = T.if_then_else(relu, T.max(acc[0] + bias[rb * r + j], T.float32(0)),
                                                                           acc[0] + bias[rb * r + j])

    return kernel


def _rows_of(bb: relax.BlockBuilder, x, k: int):
    """x flattened to [rows, k]: (flat x, leading dims, rows as an int or a symbolic expression)."""
    lead = list(x.ty.shape.values[:-1])
    if all(isinstance(d, tvm.tirx.IntImm) for d in lead):
        rows = int(np.prod([int(d) for d in lead]))
    else:
        rows = lead[0]
        for d in lead[1:]:
            rows = rows * d
    flat = x if len(lead) == 1 else bb.normalize(relax.op.reshape(x, [rows, k]))
    return flat, lead, rows


class _Operands:
    """What both lowerings read off a BlockSparseMatMul node: x flattened to [rows, k] (rows an
    int, or an expression of symbolic dims), the BSR arrays and bias, the shape and epilogue."""

    def __init__(self, bb: relax.BlockBuilder, node: Node, inputs: list):
        x, data, indices, indptr = inputs[:4]
        self.out, self.k = (int(d) for d in node.attr("shape"))
        self.block = tuple(int(d) for d in node.attr("block"))
        bias = inputs[4] if len(inputs) > 4 and inputs[4] is not None else relax.const(np.zeros(self.out, np.float32))
        self.sparse = [data, indices, indptr, bias]
        self.nnzb = int(node.input(2).const.shape[0])
        self.flat, self.lead, self.rows = _rows_of(bb, x, self.k)
        self.relu = node.attr("activation", "none") == "relu"
        self.suffix = "_relu" if self.relu else ""

    def call(self, bb: relax.BlockBuilder, kernel, x, pointers=None):
        """``kernel(x, data, indices, indptr, bias) -> [rows, out]``; ``pointers`` in place of
        indptr (the CPU kernel's per-K-block ranges)."""
        sparse = self.sparse if pointers is None else [self.sparse[0], self.sparse[1], pointers, self.sparse[3]]
        return bb.normalize(relax.call_tir(kernel, [x, *sparse], relax.TensorType([self.rows, self.out], "float32")))

    def block_pointers(self, node: Node, blocks: int):
        """The CPU BSR kernel's kptr (see bsr_block_pointers), a constant."""
        indices, indptr = node.input(2).const, node.input(3).const
        return relax.const(bsr_block_pointers(indices, indptr, self.k, self.block, blocks))

    def k_blocks(self, node: Node) -> int:
        """bsr_k_blocks, or 1 when a block row's indices are out of order (sparsec sorts its own;
        an op from a file may not be, and K-block ranges need order)."""
        indices, indptr = node.input(2).const, node.input(3).const
        if not all(np.all(np.diff(indices[a:b]) >= 0) for a, b in zip(indptr[:-1], indptr[1:])):
            return 1
        return bsr_k_blocks(self.rows, self.k, self.out, self.block)

    def unflatten(self, bb: relax.BlockBuilder, y):
        return y if len(self.lead) == 1 else bb.normalize(relax.op.reshape(y, [*self.lead, self.out]))


@register_lowering("sparsec", "BlockSparseMatMul", targets=("cuda",))
def lower_block_sparse_matmul_cuda(bb: relax.BlockBuilder, node: Node, inputs: list, attrs: dict):
    if node.attr("layout", "rows") == "channels":
        raise CompileError(f"{node.name}: the channels-first (1x1 convolution) sparse kernel is CPU-only")
    o = _Operands(bb, node, inputs)
    static = isinstance(o.rows, int)
    m = o.rows if static else tvm.tirx.Var("m", "int64")
    name = f"bsr_matmul_cuda_{o.rows if static else 'dyn'}x{o.k}x{o.out}_{o.block[0]}x{o.block[1]}{o.suffix}"
    kernel = bb.add_func(bsr_kernel_cuda(m, o.k, o.out, o.block, o.nnzb, o.relu), name)
    return o.unflatten(bb, o.call(bb, kernel, o.flat))


@register_lowering("sparsec", "BlockSparseMatMul", targets=CPU_TARGETS)
def lower_block_sparse_matmul(bb: relax.BlockBuilder, node: Node, inputs: list, attrs: dict):
    if node.attr("layout", "rows") == "channels":
        return _lower_channels_first(bb, node, inputs)
    o = _Operands(bb, node, inputs)
    shape = f"{o.k}x{o.out}_{o.block[0]}x{o.block[1]}{o.suffix}"
    if not isinstance(o.rows, int):  # symbolic: the BSR kernel takes any row count (CSR needs it static)
        kernel = bb.add_func(bsr_kernel(tvm.tirx.Var("m", "int64"), o.k, o.out, o.block, o.nnzb, o.relu), f"bsr_matmul_dyn_{shape}")
        y = o.call(bb, kernel, o.flat, o.block_pointers(node, 1))
    elif o.block == (1, 1):
        kernel = bb.add_func(csr_transposed_kernel(o.rows, o.k, o.out, o.nnzb, o.relu),
                             f"csr_matmul_{o.rows}x{o.k}x{o.out}{o.suffix}")
        xt = bb.normalize(relax.op.reshape(relax.op.permute_dims(o.flat, [1, 0]), [1, o.k, o.rows]))
        yt = bb.normalize(relax.call_tir(kernel, [xt, *o.sparse], relax.TensorType([1, o.out, o.rows], "float32")))
        y = bb.normalize(relax.op.permute_dims(relax.op.reshape(yt, [o.out, o.rows]), [1, 0]))
    else:
        blocks = o.k_blocks(node)
        kernel = bb.add_func(bsr_kernel(o.rows, o.k, o.out, o.block, o.nnzb, o.relu, blocks),
                             f"bsr_matmul_{o.rows}x{shape}" + (f"_k{blocks}" if blocks > 1 else ""))
        y = o.call(bb, kernel, o.flat, o.block_pointers(node, blocks))
    return o.unflatten(bb, y)


def _lower_channels_first(bb: relax.BlockBuilder, node: Node, inputs: list):
    """x ``[N, in, M]`` -> y ``[N, out, M]`` with the CSR kernel, no transposes: x already is the
    kernel's x.T, one matrix per image."""
    out, k = (int(d) for d in node.attr("shape"))
    shape = inputs[0].ty.shape.values
    if tuple(int(d) for d in node.attr("block")) != (1, 1) or not all(isinstance(d, tvm.tirx.IntImm) for d in shape):
        raise CompileError(f"{node.name}: the channels-first sparse kernel takes CSR (1x1 blocks) and static shapes")
    batch, pixels = int(shape[0]), int(shape[2])
    bias = inputs[4] if len(inputs) > 4 and inputs[4] is not None else relax.const(np.zeros(out, np.float32))
    relu = node.attr("activation", "none") == "relu"
    nnz = int(node.input(2).const.shape[0])
    kernel = bb.add_func(csr_transposed_kernel(pixels, k, out, nnz, relu, batch=batch),
                         f"csr_conv1x1_{batch}x{k}x{pixels}_to_{out}{'_relu' if relu else ''}")
    return bb.normalize(relax.call_tir(kernel, [inputs[0], *inputs[1:4], bias], relax.TensorType([batch, out, pixels], "float32")))
