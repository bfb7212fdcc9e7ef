"""CPU kernel of ``sparsec.NMSparseMatMul``: a 2:4 / 4:8 weight read compressed, with no gather.

At compile time the compressed weight is repacked into panels of L outputs (L the vector width):
``values[panel, j, lane]`` and ``offsets[panel, j, lane]`` (uint8), where the j-th kept weight of
a lane lies in a window of L consecutive inputs at ``offsets`` from the window's start. Every
window holds the same number of kept weights per lane (``L / M * N``), so the loops have fixed
bounds. For each window the kernel loads the L inputs of x once and, for every kept weight,
permutes them into the lanes' order with one ``vpermps`` (``permute_x``) and multiplies-adds:
per L multiply-adds it reads L values, L one-byte offsets and no index of x from memory. A 2:4
weight is read as 5/8 of the dense weight's bytes, which is what pays when a small row count makes
the dense product memory-bound; with many rows it does two vector ops where dense does one.

Without a permute instruction (other ISAs, the ``c`` target) the same loop gathers x lane by
lane (``x[window + offset]``): correct, and slower.
"""

from __future__ import annotations

import functools

import numpy as np
import tvm
from tvm import relax
from tvm.target import codegen
from tvm.script import tirx as T

from ....ir.graph import Node
from ..lower import register_lowering
from ..targets import host_cpu_flags, host_vector_lanes, host_vector_registers
from .sparse import _epilogue, _rows_of, balanced_chunks, row_tiles

# LLVM's lane permute of a float vector by an int32 vector, by lanes.
PERMUTES = {8: ("llvm.x86.avx2.permps", "avx2"), 16: ("llvm.x86.avx512.permvar.sf.512", "avx512f")}


def target_permute(lanes: int) -> str | None:
    """The permute intrinsic at ``lanes`` float lanes if the target being built for has it (LLVM
    aborts the process on an intrinsic its target lacks, as with ``mcpu=x86-64``), else None.
    Outside a build (no current target) the host's CPU decides."""
    name, feature = PERMUTES.get(lanes, (None, None))
    if name is None:
        return None
    target = tvm.target.Target.current(allow_none=True)
    if target is None:
        return name if feature in host_cpu_flags() else None
    return name if target.kind.name == "llvm" and codegen.target_has_features(feature, target) else None


def window_width(lanes: int, m: int) -> int:
    """Inputs per window: the vector width when a group of M fits it evenly, else M."""
    return lanes if lanes % m == 0 else m


def pack_panels(values: np.ndarray, positions: np.ndarray, n: int, m: int, lanes: int):
    """(values [panels, kept, L], offsets [panels, kept, L] uint8) from the op's compressed
    ``[out, kept]`` arrays: the outputs padded to a multiple of L with zero weights, and each kept
    weight's offset taken from the start of its window instead of its group."""
    out, kept = values.shape
    width = window_width(lanes, m)
    per_window_groups = width // m
    group = np.arange(kept) // n
    offsets = (group % per_window_groups * m)[None, :] + positions.astype(np.int64)
    panels = -(-out // lanes)
    pad = panels * lanes - out
    values = np.pad(values, ((0, pad), (0, 0)))
    offsets = np.pad(offsets, ((0, pad), (0, 0)))
    packed = [np.ascontiguousarray(a.reshape(panels, lanes, kept).transpose(0, 2, 1)) for a in (values, offsets)]
    return packed[0].astype(np.float32), packed[1].astype(np.uint8)


def row_tile(registers: int) -> int:
    """Activation rows per register tile: an accumulator and an x window per row, plus the
    value, offsets and permuted vector. AVX2 (16 registers): 4; AVX-512: 8."""
    return max(1, min(8, (registers - 4) // 2 - 2))


def nm_kernel(rows, k: int, out: int, n: int, m: int, lanes: int, permute: str | None, relu: bool = False, mr: int = 4):
    """``rows`` is an int, or a ``tirx.Var`` for a symbolic row count."""
    width = window_width(lanes, m)
    per_window = width // m * n  # kept weights per lane in a window
    kept = k // m * n
    windows = k // width
    permute = permute if width == lanes else None
    panels = -(-out // lanes)
    padded = panels * lanes
    chunks, per_chunk = balanced_chunks(panels, 64)
    epilogue = _epilogue(relu)
    full, tail, tail_tiles, single_rows = row_tiles(rows, mr)
    vec = f"float32x{lanes}"

    @T.macro
    def permuted_step(x, values, offsets, acc, p, j, i, row, w):
        # The kept weights j of panel p times x's window w at `row`, permuted into their lanes.
        acc[i, T.Ramp(0, 1, lanes)] = acc[i, T.Ramp(0, 1, lanes)] + values[p, j, T.Ramp(0, 1, lanes)] * T.call_llvm_pure_intrin(
            vec, permute, x[row, T.Ramp(w * width, 1, lanes)], T.Cast(f"int32x{lanes}", offsets[p, j, T.Ramp(0, 1, lanes)]))

    @T.macro
    def gathered_step(x, values, offsets, acc, p, j, i, row, w):
        # The same, x gathered lane by lane.
        for v in T.vectorized(lanes):
            acc[i, v] = acc[i, v] + values[p, j, v] * x[row, w * width + T.Cast("int32", offsets[p, j, v])]

    step = permuted_step if permute is not None else gathered_step

    # One row: its kept weights alternate between `chains` accumulators (the spare rows of the
    # tile), so consecutive multiply-adds do not wait on each other.
    chains = max(1, min(mr, per_window))

    @T.macro
    def one_row(x, values, offsets, bias, y, acc, p, row):
        for i in T.unroll(chains):
            for v in T.vectorized(lanes):
                acc[i, v] = T.float32(0)
        for w in range(windows):
            for jj in T.unroll(per_window):
                step(x, values, offsets, acc, p, w * per_window + jj, jj % chains, row, w)
        for jj in range(kept - windows * per_window):
            gathered_step(x, values, offsets, acc, p, windows * per_window + jj, 0, row, windows)
        for i in T.unroll(1, chains):
            for v in T.vectorized(lanes):
                acc[0, v] = acc[0, v] + acc[i, v]
        for v in T.vectorized(lanes):
            y[row, p * lanes + v] = epilogue(acc[0, v] + bias[p * lanes + v])

    @T.macro
    def tile(x, values, offsets, bias, y, acc, p, base, count):
        for i in T.unroll(count):
            for v in T.vectorized(lanes):
                acc[i, v] = T.float32(0)
        for w in range(windows):
            for jj in T.unroll(per_window):
                for i in T.unroll(count):
                    step(x, values, offsets, acc, p, w * per_window + jj, i, base + i, w)
        for jj in range(kept - windows * per_window):  # a last window shorter than the vector (k % width)
            for i in T.unroll(count):
                gathered_step(x, values, offsets, acc, p, windows * per_window + jj, i, base + i, windows)
        for i in T.unroll(count):
            for v in T.vectorized(lanes):
                y[base + i, p * lanes + v] = epilogue(acc[i, v] + bias[p * lanes + v])

    @T.prim_func(private=True, s_tir=True)
    def kernel(x: T.Buffer((rows, k), "float32"), values: T.Buffer((panels, kept, lanes), "float32"),
               offsets: T.Buffer((panels, kept, lanes), "uint8"), bias: T.Buffer((padded,), "float32"),
               y: T.Buffer((rows, padded), "float32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        for chunk in T.parallel(chunks):
            acc = T.decl_buffer((mr, lanes), "float32", scope="local")
            for local in range(per_chunk):
                p = T.meta_var(chunk * per_chunk + local)
                if p < panels:
                    for mo in range(rows // mr):
                        tile(x, values, offsets, bias, y, acc, p, mo * mr, mr)
                    for _ in range(tail_tiles):
                        if tail == 1:
                            one_row(x, values, offsets, bias, y, acc, p, full)
                        else:
                            tile(x, values, offsets, bias, y, acc, p, full, tail)
                    for row in range(single_rows):
                        one_row(x, values, offsets, bias, y, acc, p, full + row)

    return kernel


def nm_kernel_cuda(rows, k: int, out: int, n: int, m: int, relu: bool = False, bind: bool = True):
    """The CUDA kernel: a thread per output element, threadIdx.x along the outputs, so a warp
    reads the kept weights of 32 outputs side by side (values and positions stored transposed,
    ``[kept, out]``: coalesced) and each thread reads its own input of x. Compiled here; it runs
    where a GPU is lent (not measured yet). ``bind=False``: serial loops, for CPU tests."""
    from .sparse import _gpu_loop

    loop = _gpu_loop(bind)
    kept = k // m * n
    tx = 64
    ty = 4
    blocks_x = -(-out // tx)
    blocks_y = (rows + ty - 1) // ty

    @T.prim_func(private=True, s_tir=True)
    def kernel(x: T.Buffer((rows, k), "float32"), values: T.Buffer((kept, out), "float32"),
               positions: T.Buffer((kept, out), "uint8"), bias: T.Buffer((out,), "float32"), y: T.Buffer((rows, out), "float32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        for bx in loop(blocks_x, "blockIdx.x"):
            for by in loop(blocks_y, "blockIdx.y"):
                for ti in loop(ty, "threadIdx.y"):
                    for tj in loop(tx, "threadIdx.x"):
                        acc = T.decl_buffer((1,), "float32", scope="local")
                        if by * ty + ti < rows and bx * tx + tj < out:
                            acc[0] = T.float32(0)
                            for j in range(kept):
                                acc[0] = acc[0] + values[j, bx * tx + tj] * x[
                                    by * ty + ti, j // n * m + T.Cast("int32", positions[j, bx * tx + tj])]
                            y[by * ty + ti, bx * tx + tj] = T.if_then_else(
                                relu, T.max(acc[0] + bias[bx * tx + tj], T.float32(0)), acc[0] + bias[bx * tx + tj])

    return kernel


def _bias(node: Node, inputs: list, out: int) -> np.ndarray:
    bias = node.input(3).const if len(inputs) > 3 and node.input(3) is not None else np.zeros(out, np.float32)
    return bias.reshape(out).astype(np.float32)


@register_lowering("sparsec", "NMSparseMatMul", targets=("cuda",))
def lower_nm_sparse_cuda(bb: relax.BlockBuilder, node: Node, inputs: list, attrs: dict):
    n, m = (int(d) for d in node.attr("pattern"))
    out, k = (int(d) for d in node.attr("shape"))
    flat, lead, rows = _rows_of(bb, inputs[0], k)
    static = isinstance(rows, int)
    relu = node.attr("activation", "none") == "relu"
    kernel = nm_kernel_cuda(rows if static else tvm.tirx.Var("m", "int64"), k, out, n, m, relu)
    gv = bb.add_func(kernel, f"nm{n}{m}_matmul_cuda_{rows if static else 'dyn'}x{k}x{out}{'_relu' if relu else ''}")
    values, positions = (np.ascontiguousarray(node.input(i).const.T) for i in (1, 2))
    y = bb.normalize(relax.call_tir(gv, [flat, relax.const(values), relax.const(positions), relax.const(_bias(node, inputs, out))],
                                    relax.TensorType([rows, out], "float32")))
    return y if len(lead) == 1 else bb.normalize(relax.op.reshape(y, [*lead, out]))


def lower_nm_sparse(bb: relax.BlockBuilder, node: Node, inputs: list, attrs: dict, use_permute: bool = True):
    n, m = (int(d) for d in node.attr("pattern"))
    out, k = (int(d) for d in node.attr("shape"))
    lanes = host_vector_lanes()
    values, offsets = pack_panels(node.input(1).const, node.input(2).const, n, m, lanes)
    padded = values.shape[0] * lanes
    bias = np.pad(_bias(node, inputs, out), (0, padded - out))
    flat, lead, rows = _rows_of(bb, inputs[0], k)
    static = isinstance(rows, int)
    relu = node.attr("activation", "none") == "relu"
    permute = target_permute(lanes) if use_permute else None
    mr = row_tile(host_vector_registers())
    kernel = nm_kernel(rows if static else tvm.tirx.Var("m", "int64"), k, out, n, m, lanes, permute, relu, mr)
    name = f"nm{n}{m}_matmul_{rows if static else 'dyn'}x{k}x{out}{'_relu' if relu else ''}"
    gv = bb.add_func(kernel, name)
    y = bb.normalize(relax.call_tir(gv, [flat, relax.const(values), relax.const(offsets), relax.const(bias)],
                                    relax.TensorType([rows, padded], "float32")))
    if padded != out:
        y = bb.normalize(relax.op.strided_slice(y, axes=[1], begin=[0], end=[out]))
    return y if len(lead) == 1 else bb.normalize(relax.op.reshape(y, [*lead, out]))


register_lowering("sparsec", "NMSparseMatMul", targets=("llvm",))(lower_nm_sparse)
# TVM's C code generator has no LLVM intrinsics: the c target's kernel gathers lane by lane.
register_lowering("sparsec", "NMSparseMatMul", targets=("c",))(functools.partial(lower_nm_sparse, use_permute=False))
