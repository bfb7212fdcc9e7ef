"""CPU kernel for ``sparsec::ReluSkipMatMul``: ``out = h @ W2 (+ bias)``, skipping W2's rows
whose activation column is zero in every row of ``h`` (decided per call, exactly).

One PrimFunc per weight shape, in three steps:

1. scan: ``flags[j] = 1`` where some ``h[t, j]`` is not exactly zero (NaN and inf count as
   non-zero, so they reach the output as they would in the dense product), and count them,
   ``SCAN_ROWS`` rows at a time, stopping as soon as the count says the dense path will run;
2. compact (only when the sparse path runs): ``active[0:count]`` lists those columns, in
   increasing order (branch-free);
3. the product over the active rows of W2 only, in one of two layouts:
   - panels (4 rows or more): for each panel of NR output columns (W2 packed at compile time as
     ``[N / NR, F, NR]``, so the NR floats of one row are contiguous) and each tile of MR rows of
     ``h``, ``acc[MR, NR] += h[t, j] * W2[j, panel]`` for j in ``active``, vectorised along NR,
     then ``out = acc + bias``. Parallel over panels.
   - rows (the sparse path below 4 rows): a row-major copy of W2; the active list is split into
     ``ROW_PARTS`` contiguous ranges, one task each, and every task walks its rows whole (3 KB
     runs at N = 768, prefetched ``PREFETCH_ROWS`` ahead), summing into L1; the parts are added
     at the end. The panel gather reads one 64-byte line per panel and row, touching every page
     of W2 for a tenth of its bytes: at one token and 10% active (3072 x 768, 2 threads, cache
     cold) the row gather took 0.16-0.20 ms against the panels' 0.31-0.32. Panels stay for the
     dense path (streaming the row-major copy with sums in L1 measured 8-15% slower at one token)
     and for 4 rows or more (a register tile over row-major W2 took 1.8-2.3x the panels' time at
     32 and 128 rows). So W2 is held twice when the row count can be below 4
     (``needs_rows_copy``); the pass says so in its note.

Run-time branches, so each call follows its own activations: when most columns are active the
gather costs more than it saves, and above ``DENSE_ABOVE`` of them the panel micro-kernel runs
over every row of W2 without the index list; a small sparse product (``SERIAL_WORK``) runs on the
calling thread, since waking TVM's sleeping pool costs more than it saves. Buffers are declared
once per parallel task, not per tile (a local buffer inside the loop body would be allocated on
every iteration).
"""

from __future__ import annotations

import functools

import numpy as np
import tvm
from tvm import relax
from tvm.script import tirx as T

from sparsec.ir.graph import Node
from ..lower import register_lowering
from ..schedules.cpu import K_BLOCK_BYTES, STRIP_ROWS
from ..targets import host_vector_lanes

# Active fraction above which the dense path runs, by row count: (fewer than 4 rows, fewer than
# 64, more). Below 4 rows the row gather pays up to ~60% active (3072 x 768, 2 threads, one token,
# cache-cold, side by side against the dense path: 60% active 1.28x faster, 70% 0.93x, 90% 0.79x;
# the panel gather before it broke even at 30%). With more rows, measured with the panel gather
# in the whole FFN: 32 rows broke even at 50%, 128 rows paid from 74%.
DENSE_ABOVE = (0.6, 0.5, 0.75)
# Multiply-adds (active columns x rows x N) up to which the product runs on one thread (waking
# the pool costs ~15-30 us with TVM_THREAD_POOL_SPIN_COUNT=0; measured crossover ~1M on 2 cores).
SERIAL_WORK = 1 << 20
# The same for the row gather: its second thread pays sooner (at one token, 307 active rows ran
# 0.107-0.128 ms in parallel against 0.128-0.130 ms on one thread; measured with a first version
# that split the columns, not the rows, between tasks).
ROW_SERIAL_WORK = 1 << 17
# Rows of h scanned between checks of the active count (the scan stops once the dense path is sure).
SCAN_ROWS = 8
# Below this many rows the product reads the row-major copy of W2 (at most 3 rows: see row_part).
ROW_GATHER_BELOW = 4
# Contiguous ranges of W2's (active) rows, one task each, for fewer than ROW_GATHER_BELOW rows.
ROW_PARTS = 4
# How many active rows ahead the row gather prefetches (their addresses are data-dependent).
PREFETCH_ROWS = 4


def tile_shape(lanes: int | None = None) -> tuple[int, int]:
    """(MR rows, NR columns) of the register tile and panel width. AVX-512: 8 x 2 vectors (half
    of 32 registers). AVX2: 4 x 3 vectors, 12 accumulators with the 3 loads and a broadcast in
    16 registers, as the dense GEMM's tile. Against 4 x 2 vectors (Zen 3, 3072 x 768, side by
    side): 32 rows at 10% active 0.565 vs 0.612 ms, dense 2.885 vs 2.929; one row dense 0.467 vs
    0.479. Panels of 4 vectors would read a single row faster still (1.00x the plain GEMV against
    0.95x) but need a 4 x 4-vector tile for more rows, which spilled: 32 rows dense 0.67x. The
    tile's columns are written as unrolled vectors (LLVM's <24 x float> code was 8x slower)."""
    lanes = lanes or host_vector_lanes()
    if lanes >= 16:
        return 8, 2 * lanes
    return (4, 3 * lanes) if lanes == 8 else (4, 2 * lanes)


def pack_panels(weight: np.ndarray, nr: int) -> np.ndarray:
    """``W[F, N]`` -> ``[ceil(N / nr), F, nr]`` panels, zero-padded on the right."""
    f, n = weight.shape
    panels = -(-n // nr)
    padded = np.zeros((f, panels * nr), dtype=weight.dtype)
    padded[:, :n] = weight
    return np.ascontiguousarray(padded.reshape(f, panels, nr).transpose(1, 0, 2))


def needs_rows_copy(rows: int | None) -> bool:
    """Whether a kernel for this row count (an int, or None when symbolic) takes the row-major
    copy of W2."""
    return rows is None or rows < ROW_GATHER_BELOW


def padded_width(n: int, nr: int) -> int:
    """Columns of the row-major copy and of the bias: n rounded up to whole panels."""
    return -(-n // nr) * nr


def pack_rows(weight: np.ndarray, nr: int) -> np.ndarray:
    """``W[F, N]`` -> ``[F, padded_width(N, nr)]``, zero-padded on the right."""
    f, n = weight.shape
    padded = np.zeros((f, padded_width(n, nr)), dtype=weight.dtype)
    padded[:, :n] = weight
    return padded


def relu_skip_kernel(f: int, n: int, mr: int, nr: int, dense_above: tuple[float, float, float] = DENSE_ABOVE,
                     serial_work: int = SERIAL_WORK, row_serial_work: int = ROW_SERIAL_WORK,
                     rows_copy: bool = True, prefetch_rows: int = PREFETCH_ROWS, k_block: int | None = None) -> tvm.tirx.PrimFunc:
    """The PrimFunc ``(h[rows, f], w[panels, f, nr], bias[width]) -> out[rows, n]``, with the
    row-major copy ``wr[f, width]`` after ``w`` when ``rows_copy`` (``width = padded_width(n, nr)``,
    see ``pack_rows``): without it, every row count runs on the panels."""
    lanes = host_vector_lanes()
    panels = -(-n // nr)
    width = padded_width(n, nr)
    assert nr % lanes == 0, "a tile's columns are whole vectors"
    # More active columns than this: the dense path (see DENSE_ABOVE)
    dense_few, dense_some, dense_many = (int(fraction * f) for fraction in dense_above)
    ragged = n % nr != 0  # the last panel has fewer than nr real columns
    k_block = k_block or K_BLOCK_BYTES // (4 * nr)
    # partial sums between K blocks: none needed when every product fits one block
    strip_size = STRIP_ROWS * nr if f > k_block else 1
    assert mr in (1, 4, 8), "leftover rows are tiled 4, 2, 1"

    rows = tvm.tirx.Var("rows", "int64")

    @T.macro
    def tile(h, w, bias, out, acc, strip, active, p, t0, s0, m, dense, lo, hi, first, last):
        # One m x nr tile of out at rows t0.. (of the strip at s0), panel p, over the K block
        # lo..hi of the rows of W2 (dense) or of the active list: the sums start at zero in the
        # first block and from the strip in later ones, and go to out (+ bias) after the last.
        # `dense` (a Python bool) picks the loop.
        if first:
            for r in T.unroll(m):  # unrolled and vectorised like every access to acc: registers
                for u in T.unroll(nr // lanes):
                    for v in T.vectorized(lanes):
                        acc[r * nr + u * lanes + v] = T.float32(0)
        else:
            for r in T.unroll(m):
                for u in T.unroll(nr // lanes):
                    for v in T.vectorized(lanes):
                        acc[r * nr + u * lanes + v] = strip[(t0 - s0 + r) * nr + u * lanes + v]
        if dense:
            for j in T.serial(lo, hi):
                for r in T.unroll(m):
                    for u in T.unroll(nr // lanes):
                        for v in T.vectorized(lanes):
                            acc[r * nr + u * lanes + v] = (acc[r * nr + u * lanes + v]
                                                           + h[t0 + r, j] * w[p, j, u * lanes + v])
        else:
            for k in T.serial(lo, hi):
                j = active[k]
                for r in T.unroll(m):
                    for u in T.unroll(nr // lanes):
                        for v in T.vectorized(lanes):
                            acc[r * nr + u * lanes + v] = (acc[r * nr + u * lanes + v]
                                                           + h[t0 + r, j] * w[p, j, u * lanes + v])
        if last:
            if ragged:
                for r in T.unroll(m):
                    for v in T.serial(nr):
                        if p * nr + v < n:
                            out[t0 + r, p * nr + v] = acc[r * nr + v] + bias[p * nr + v]
            else:
                for r in T.unroll(m):
                    for u in T.unroll(nr // lanes):
                        for v in T.vectorized(lanes):
                            out[t0 + r, p * nr + u * lanes + v] = (acc[r * nr + u * lanes + v]
                                                                   + bias[p * nr + u * lanes + v])
        else:
            for r in T.unroll(m):
                for u in T.unroll(nr // lanes):
                    for v in T.vectorized(lanes):
                        strip[(t0 - s0 + r) * nr + u * lanes + v] = acc[r * nr + u * lanes + v]

    @T.macro
    def panel_rows(h, w, bias, out, acc, strip, active, count, p, rows, dense):
        # Strips of up to STRIP_ROWS rows; in each, K blocks of k_block rows of the panel (kept in
        # L1 while every row tile of the strip passes over them, see CPUMatmul); in each block,
        # full mr-row tiles, then the leftover rows in tiles of 4, 2, 1 (binary decomposition).
        for s in T.serial((rows + (STRIP_ROWS - 1)) // STRIP_ROWS):
            s0 = s * STRIP_ROWS
            srows = T.min(rows - s0, T.int64(STRIP_ROWS))
            blocks = T.max((count + (k_block - 1)) // k_block, 1)  # one when none is active: the bias alone
            for kb in T.serial(blocks):
                lo = kb * k_block
                hi = T.min(count, lo + k_block)
                for tt in T.serial(srows // mr):
                    tile(h, w, bias, out, acc, strip, active, p, s0 + tt * mr, s0, mr, dense, lo, hi, kb == 0, kb == blocks - 1)
                base = s0 + srows - srows % mr
                rem = srows % mr
                if mr > 4:
                    if rem & 4 != 0:
                        tile(h, w, bias, out, acc, strip, active, p, base, s0, 4, dense, lo, hi, kb == 0, kb == blocks - 1)
                if mr > 2:
                    if rem & 2 != 0:
                        tile(h, w, bias, out, acc, strip, active, p, base + (rem & 4), s0, 2, dense, lo, hi, kb == 0,
                             kb == blocks - 1)
                if mr > 1:
                    if rem & 1 != 0:
                        tile(h, w, bias, out, acc, strip, active, p, base + (rem & 6), s0, 1, dense, lo, hi, kb == 0,
                             kb == blocks - 1)

    @T.macro
    def row_part(h, wr, sums, part, active, lo, hi, m):
        # Rows lo..hi of the (active) list, row-major, for m rows of h: each W2 row is read once,
        # whole, and used for all m rows; the sums stay in L1 (sums[part]).
        for r in T.unroll(m):
            for vo in T.serial(width // lanes):
                for v in T.vectorized(lanes):
                    sums[part, r, vo * lanes + v] = T.float32(0)
        for k in T.serial(hi - lo):
            j = active[lo + k]
            if prefetch_rows > 0:  # each 64-byte line (16 floats) of a row a few active rows ahead
                for line in T.unroll(width // 16):
                    T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch.p0", T.address_of(
                        wr[active[T.min(lo + k + prefetch_rows, hi - 1)], line * 16]), 0, 3, 1))
            for step in T.serial(width // nr):
                for u in T.unroll(nr // lanes):
                    for r in T.unroll(m):
                        for v in T.vectorized(lanes):
                            sums[part, r, step * nr + u * lanes + v] = (
                                sums[part, r, step * nr + u * lanes + v]
                                + h[r, j] * wr[j, step * nr + u * lanes + v])

    @T.macro
    def row_product(h, wr, bias, out, sums, active, count, rows, parallel):
        # Fewer than 4 rows: the (active) rows of W2 are split into ROW_PARTS contiguous ranges,
        # one task each, so every task streams whole rows; the parts' sums are added at the end.
        for part in T.parallel(ROW_PARTS) if parallel else T.serial(ROW_PARTS):
            lo = count * part // ROW_PARTS
            hi = count * (part + 1) // ROW_PARTS
            if rows == 1:
                row_part(h, wr, sums, part, active, lo, hi, 1)
            elif rows == 2:
                row_part(h, wr, sums, part, active, lo, hi, 2)
            else:
                row_part(h, wr, sums, part, active, lo, hi, 3)
        for r in T.serial(rows):
            for vo in T.serial(width // lanes):
                for v in T.vectorized(lanes):
                    sums[0, r, vo * lanes + v] = sums[0, r, vo * lanes + v] + bias[vo * lanes + v]
            for part in T.serial(1, ROW_PARTS):
                for vo in T.serial(width // lanes):
                    for v in T.vectorized(lanes):
                        sums[0, r, vo * lanes + v] = sums[0, r, vo * lanes + v] + sums[part, r, vo * lanes + v]
            if width == n:
                for vo in T.serial(width // lanes):
                    for v in T.vectorized(lanes):
                        out[r, vo * lanes + v] = sums[0, r, vo * lanes + v]
            else:
                for v in T.serial(n):
                    out[r, v] = sums[0, r, v]

    @T.macro
    def product(h, w, wr, bias, out):
        flags = T.decl_buffer((f,), "int32")
        active = T.decl_buffer((f,), "int32")
        count = T.decl_buffer((1,), "int32")
        partial = T.decl_buffer((lanes,), "int32")
        # 1. scan: exact zeros only (h == 0 is false for NaN, so NaN columns stay active), 8 rows
        # at a time, stopping once more columns are active than the dense path's threshold (the
        # dense path needs no flags; the sparse path runs only after a complete scan).
        limit = T.if_then_else(rows < 4, dense_few, T.if_then_else(rows < 64, dense_some, dense_many))
        # (Vectors of the ISA's width: one f-wide vector became thousands of spilled lanes.)
        for jo in T.serial(f // lanes):
            for v in T.vectorized(lanes):
                flags[jo * lanes + v] = 0
        for j in T.serial(f // lanes * lanes, f):
            flags[j] = 0
        done = T.decl_buffer((1,), "int64")
        done[0] = T.int64(0)
        count[0] = 0
        while done[0] < rows and count[0] <= limit:
            for t in T.serial(T.min(rows - done[0], T.int64(SCAN_ROWS))):
                for jo in T.serial(f // lanes):
                    for v in T.vectorized(lanes):
                        flags[jo * lanes + v] = flags[jo * lanes + v] | T.Select(
                            h[done[0] + t, jo * lanes + v] == T.float32(0), 0, 1)
                for j in T.serial(f // lanes * lanes, f):
                    flags[j] = flags[j] | T.Select(h[done[0] + t, j] == T.float32(0), 0, 1)
            done[0] = T.min(rows, done[0] + T.int64(SCAN_ROWS))
            for v in T.vectorized(lanes):
                partial[v] = 0
            for jo in T.serial(f // lanes):
                for v in T.vectorized(lanes):
                    partial[v] = partial[v] + flags[jo * lanes + v]
            count[0] = 0
            for j in T.serial(f % lanes):
                count[0] = count[0] + flags[f // lanes * lanes + j]
            for v in T.serial(lanes):
                count[0] = count[0] + partial[v]
        num = count[0]
        # sums of the row-major product's parts (fewer than 4 rows)
        sums = T.decl_buffer((ROW_PARTS, max(1, ROW_GATHER_BELOW - 1), width), "float32")
        # 2. the product over all rows of W2 when few are skipped, else over the active ones
        if num > limit:
            for p in T.parallel(panels):
                acc = T.decl_buffer((mr * nr,), "float32", scope="local")
                strip = T.decl_buffer((strip_size,), "float32", scope="local")
                panel_rows(h, w, bias, out, acc, strip, active, f, p, rows, True)
        else:
            # compact, branch-free: write every j, advance only past active ones
            count[0] = 0
            for j in T.serial(f):
                active[count[0]] = j
                count[0] = count[0] + flags[j]
            # A small product runs on the calling thread: waking the pool costs more than it saves.
            serial = T.Cast("int64", num) * rows * n <= serial_work
            if wr is not None and rows < ROW_GATHER_BELOW:
                if T.Cast("int64", num) * rows * n <= row_serial_work:
                    row_product(h, wr, bias, out, sums, active, num, rows, False)
                else:
                    row_product(h, wr, bias, out, sums, active, num, rows, True)
            elif serial:
                acc = T.decl_buffer((mr * nr,), "float32", scope="local")
                strip = T.decl_buffer((strip_size,), "float32", scope="local")
                for p in T.serial(panels):
                    panel_rows(h, w, bias, out, acc, strip, active, num, p, rows, False)
            else:
                for p in T.parallel(panels):
                    acc = T.decl_buffer((mr * nr,), "float32", scope="local")
                    strip = T.decl_buffer((strip_size,), "float32", scope="local")
                    panel_rows(h, w, bias, out, acc, strip, active, num, p, rows, False)

    # s_tir=True: buffers without a TileLayout. With tirx's default layout, Relax passes that
    # rebuild the function (AttachAttrLayoutFreeBuffers, FuseTIR) give the layout a fresh copy of
    # the symbolic row count, and MakePackedAPI then fails on an undefined variable (TVM 0.27).
    if rows_copy:
        @T.prim_func(private=True, s_tir=True)
        def relu_skip_matmul(h: T.Buffer((rows, f), "float32"), w: T.Buffer((panels, f, nr), "float32"),
                             wr: T.Buffer((f, width), "float32"), bias: T.Buffer((width,), "float32"),
                             out: T.Buffer((rows, n), "float32")):
            T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
            product(h, w, wr, bias, out)
    else:
        @T.prim_func(private=True, s_tir=True)
        def relu_skip_matmul(h: T.Buffer((rows, f), "float32"), w: T.Buffer((panels, f, nr), "float32"),
                             bias: T.Buffer((width,), "float32"), out: T.Buffer((rows, n), "float32")):
            T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
            product(h, w, None, bias, out)

    return relu_skip_matmul


@register_lowering("sparsec", "ReluSkipMatMul", targets=("llvm",))
def lower_relu_skip(bb: relax.BlockBuilder, node: Node, inputs: list, attrs: dict,
                    prefetch_rows: int = PREFETCH_ROWS) -> relax.Expr:
    # W2 and the bias are IR constants (the pass checks): packed here, once, at compile time.
    w = node.input(1).const.astype(np.float32)
    f, n = w.shape
    mr, nr = tile_shape()
    packed = pack_panels(w, nr)
    bias = np.zeros(padded_width(n, nr), np.float32)
    if node.input(2) is not None:
        bias[:n] = node.input(2).const.reshape(-1)
    # The kernel takes h as rows x F: leading dims are flattened around it (they may be symbolic).
    h = inputs[0]
    lead = list(h.ty.shape.values[:-1])
    rows = lead[0]
    for d in lead[1:]:
        rows = rows * d
    # (the pass's row_copy="off" sets the node's row_copy to 0: W is then held once)
    rows_copy = (node.attr("row_copy", 1) != 0
                 and needs_rows_copy(int(rows) if isinstance(rows, tvm.tirx.IntImm) else None))
    weights = [relax.const(packed)] + ([relax.const(pack_rows(w, nr))] if rows_copy else [])
    kernel = bb.add_func(relu_skip_kernel(f, n, mr, nr, rows_copy=rows_copy, prefetch_rows=prefetch_rows),
                         f"relu_skip_matmul_{f}x{n}" + ("_rows" if rows_copy else ""))
    flat = h if len(lead) == 1 else bb.normalize(relax.op.reshape(h, [rows, f]))
    out = bb.normalize(relax.call_tir(kernel, [flat, *weights, relax.const(bias)],
                                      relax.TensorType([rows, n], "float32")))
    return out if len(lead) == 1 else bb.normalize(relax.op.reshape(out, [*lead, n]))


# TVM's C code generator has no LLVM intrinsics: the c target's kernel goes without prefetches.
register_lowering("sparsec", "ReluSkipMatMul", targets=("c",))(functools.partial(lower_relu_skip, prefetch_rows=0))
