"""CPU kernel of ``sparsec.MoE``: route, group tokens by expert, run only the active experts.

One PrimFunc takes the router's logits and does the rest with no Python in between:

0. the router: per token, the k largest of softmax(logits) (or of the logits, softmax after),
   ties to the lower expert id as ONNX TopK, optionally renormalised. In the kernel rather than
   as Relax ops: one call instead of five at one token, and TVM 0.27's C backend cannot build
   its topk (the generated C does not compile);
1. counting sort of the (token, slot) pairs by expert: per-expert offsets, token and weight per
   position (serial: T x k small integers);
2. ``h[pos] = act(x[token] @ W1[e] + b1[e])`` for each active expert's positions, in MR-row
   register tiles (one-row tiles for an expert with a single row), parallel over column tiles of F (positions are unique: no write conflicts);
   gated experts pack each gate column tile next to its "up" tile, so one register tile of twice
   the width computes both and the epilogue multiplies ``act(gate) * up``;
3. ``y[token] += weight * (h[pos] @ W2[e] + b2[e])``, parallel over column tiles of H, so the k
   contributions to one token land in the same task, in order.

With ``skip_zeros`` (ReLU experts, plain or gated; the pass decides), an expert with a single row
(every expert at one token, most at a few tokens per expert) reads only the rows of W2 whose
activation is not exactly zero, from W2 as it is ([E, F, H]: whole rows, 2 KB at H = 512;
skipping 128-byte pieces of the panels saved nothing at 50% zeros, the hardware prefetcher
fetched them anyway). Step 2 then runs as one task per core over ranges of F's column tiles, and
each task goes on to the W2 rows of its own columns, summing into its row of partial sums: the
single-row experts' second layer needs no other task's h, so no second wake of the thread pool;
step 3 adds the parts with the bias and routing weight (on the calling thread when every expert
has a single row). Zen 3, 2 threads, E=64 top-2 at one token, cache-cold, half the activations
zero: 0.95 -> 0.81 ms per layer call (ORT 22.6 ms); the kernel alone at 90% zeros 0.90 -> 0.58 ms.

An expert no token chose costs one comparison: its weights are never read.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.script import tirx as T

from ....errors import CompileError
from ....ir.graph import Node
from ..lower import CPU_TARGETS, register_lowering
from .sparse import _gpu_loop
from ..targets import host_vector_lanes, host_vector_registers
from .relu_skip import ROW_PARTS


def _tile_rows() -> int:
    """Token rows per register tile: 4 with 32 vector registers (AVX-512), 2 with 16 (AVX2).
    Experts see few rows each (T x k over E), so a tile's rows are mostly clamped copies of its
    last one and wider column tiles pay more: on Zen 3, E=64 top-2, the expert kernel alone
    (random routing, 20-30 calls each): 2 x 32 against 4 x 16 took 1.75-2.14 ms vs 2.18-2.40 at
    T=1, 25.0-25.7 vs 30.4-30.5 at T=16, 83.8 vs 111.7 at T=128 (1 x 64 was faster still at
    T <= 16, 1.80 and 23.1, but slower at T=128, 91.2; 3 x 32 between). An expert with a single
    row gets a one-row tile of the same columns: 1.51-1.55 vs 1.66-1.81 ms at T=1, 20.0 vs 23.9
    at T=16, 83.1 vs 81.1 at T=128 (where few experts have one row)."""
    return 4 if host_vector_registers() >= 32 else 2


def _widest_tile() -> int:
    """Columns per register tile: rows x a power of two of vectors within 3/4 of the vector
    registers: 64 columns with AVX-512 (4 x 4 vectors: 16 of 32 registers), 32 with AVX2 (2 x 4
    vectors: 8 of 16; 4 x 8 vectors, 32 registers, spilled: E=64 top-2 over 16 tokens took
    15.7 ms, 12.6 ms with 4 x 2)."""
    vectors = max(1, host_vector_registers() * 3 // 4 // _tile_rows())
    return (1 << (vectors.bit_length() - 1)) * host_vector_lanes()


def _tile(extent: int, widest: int | None = None) -> int:
    widest = widest or _widest_tile()
    return next(t for t in (64, 32, 16, 8, 4, 2, 1) if t <= widest and extent % t == 0)


def _ffn_tile(ffn: int, gated: bool) -> int:
    """Columns of F per register tile: a gated tile holds gate and up columns, so half as many."""
    widest = _widest_tile()
    return _tile(ffn, widest // 2 if gated else widest)


def _activation(name: str):
    if name == "relu":
        return lambda v: T.max(v, T.float32(0))
    if name == "silu":
        return lambda v: v / (T.float32(1) + T.exp(-v))
    if name == "gelu":
        return lambda v: T.float32(0.5) * v * (T.float32(1) + T.erf(v * T.float32(0.7071067811865476)))
    raise ValueError(f"unknown activation {name!r}")


def _gather_parts(tiles: int) -> int:
    """Tasks of the first layer with skip_zeros: one per core of the target (at least ROW_PARTS),
    so the first layer keeps every core busy while the partial sums stay few."""
    target = tvm.target.Target.current(allow_none=True)
    cores = int(target.attrs.get("num-cores", 0)) if target is not None and "num-cores" in target.attrs else 0
    return min(tiles, max(ROW_PARTS, cores))


# Routing serially on the calling thread below this many (token, expert) scores: a parallel loop
# wakes the thread pool (15-30 us when it does not spin), more than E exps for a few tokens cost.
SERIAL_ROUTING_SCORES = 8192


def moe_kernel(tokens, hidden: int, ffn: int, experts: int, k: int, activation: str, gated: bool = False,
               softmax: str = "before", normalize: bool = False, skip_zeros: bool = False):
    """``tokens``: an int, or a ``tirx.Var`` for a symbolic token count (``s_tir=True`` keeps the
    buffers free of the layouts TVM 0.27 would rebuild with a fresh copy of the variable).
    ``ffn`` is F, the width of the hidden layer (W1 holds 2F columns when ``gated``); ``softmax``
    and ``normalize`` are the router's, as ``sparsec.MoE`` states them.

    Parameters ``(x, logits, w1, b1, w2, b2, y)``; with ``skip_zeros``, W2's row-major copy
    ``w2r [E, F, H]`` follows ``w2``, and at one token (a static 1: no expert ever has two rows)
    it replaces ``w2``: ``(x, logits, w1, b1, w2r, b2, y)``."""
    if not 1 <= k <= experts:
        raise ValueError(f"top-{k} of {experts} experts")
    act = _activation(activation)
    before = softmax == "before"
    MR = _tile_rows()  # noqa: N806 (a constant of the kernel, as in its TIR)
    pairs = tokens * k
    ft, ht = _ffn_tile(ffn, gated), _tile(hidden)
    wt = 2 * ft if gated else ft  # W1 columns per packed panel
    width1 = 2 * ffn if gated else ffn
    lanes = host_vector_lanes()
    static = isinstance(tokens, int)
    panels = not (skip_zeros and static and tokens == 1)  # W2 panels: for experts with two rows or more
    # experts with a single row hold at most one position each: partial sums for min(E, T x k) of them
    singles = min(experts, pairs) if static else T.min(T.int64(experts), pairs)
    tiles = ffn // ft
    # tasks of the first layer: every column tile, or with skip_zeros ranges of them, each with its
    # own partial sums of the single-row experts' second layer (step 3 adds them)
    parts = _gather_parts(tiles) if skip_zeros else tiles

    def hidden_value(acc, i, f):
        return act(acc[i, f]) * acc[i, ft + f] if gated else act(acc[i, f])

    @T.macro
    def layer1(x, w1, b1, h, offsets, token_at, acc, e, fo, g, m):
        # rows g*MR.. of expert e (m of them in the tile; rows past the expert's last are clamped
        # copies of it, computed and not stored) x columns fo of F
        for i in T.unroll(m):
            for f in T.vectorized(wt):
                acc[i, f] = b1[e, fo * wt + f]
        for c in range(hidden):
            for i in T.unroll(m):
                for f in T.vectorized(wt):
                    acc[i, f] = acc[i, f] + x[token_at[T.min(offsets[e] + g * MR + i, offsets[e + 1] - 1)], c] * w1[e, fo, c, f]
        for i in range(T.min(m, offsets[e + 1] - offsets[e] - g * MR)):
            for f in T.vectorized(ft):
                h[offsets[e] + g * MR + i, fo * ft + f] = hidden_value(acc, i, f)

    @T.macro
    def layer2(h, w2, b2, y, offsets, token_at, weight_at, acc2, e, ho, g, m):
        # the same tile over h's rows (by position) x columns ho of H, added to y by token with
        # the routing weight. (One macro for both layers would need callbacks for what each
        # reads and writes: two plain ones read better.)
        for i in T.unroll(m):
            for v in T.vectorized(ht):
                acc2[i, v] = b2[e, ho * ht + v]
        for c in range(ffn):
            for i in T.unroll(m):
                for v in T.vectorized(ht):
                    acc2[i, v] = acc2[i, v] + h[T.min(offsets[e] + g * MR + i, offsets[e + 1] - 1), c] * w2[e, ho, c, v]
        for i in range(T.min(m, offsets[e + 1] - offsets[e] - g * MR)):
            for v in T.vectorized(ht):
                y[token_at[offsets[e] + g * MR + i], ho * ht + v] = (
                    y[token_at[offsets[e] + g * MR + i], ho * ht + v] + weight_at[offsets[e] + g * MR + i] * acc2[i, v])

    @T.macro
    def add_row(sums, part, s, w2r, e, c, value):
        # sums[part, s, :] += value * W2[e, c, :], a whole row (vectors, then a scalar tail)
        for vo in T.serial(hidden // lanes):
            for v in T.vectorized(lanes):
                sums[part, s, vo * lanes + v] = sums[part, s, vo * lanes + v] + value * w2r[e, c, vo * lanes + v]
        for v in T.serial(hidden // lanes * lanes, hidden):
            sums[part, s, v] = sums[part, s, v] + value * w2r[e, c, v]

    @T.macro
    def gather_rows(h, w2r, sums, offsets, single, count, part, lo, hi):
        # columns lo..hi of F, for each single-row expert: only the rows of W2 whose activation
        # is not exactly zero (NaN compares unequal, so it reaches the output as in the dense
        # product). (Listing them first to prefetch a few rows ahead measured the same.)
        for s in range(count):
            for v in T.serial(hidden):
                sums[part, s, v] = T.float32(0)
            for c in T.serial(lo, hi):
                if h[offsets[single[s]], c] != T.float32(0):
                    add_row(sums, part, s, w2r, single[s], c, h[offsets[single[s]], c])

    @T.macro
    def add_parts(sums, b2, y, offsets, token_at, weight_at, slot, acc2, e, ho):
        # a single-row expert's output columns ho: the parts' sums, its bias, weighted, into y
        for v in T.vectorized(ht):
            acc2[0, v] = b2[e, ho * ht + v]
        for part in T.unroll(parts):
            for v in T.vectorized(ht):
                acc2[0, v] = acc2[0, v] + sums[part, slot[e], ho * ht + v]
        for v in T.vectorized(ht):
            y[token_at[offsets[e]], ho * ht + v] = (
                y[token_at[offsets[e]], ho * ht + v] + weight_at[offsets[e]] * acc2[0, v])

    @T.macro
    def second_layer(h, w2, b2, y, offsets, token_at, weight_at, slot, sums, ho):
        acc2 = T.decl_buffer((MR, ht), "float32", scope="local")
        for t in range(tokens):
            for v in T.vectorized(ht):
                y[t, ho * ht + v] = T.float32(0)
        for e in range(experts):
            if offsets[e + 1] - offsets[e] == 1:
                if skip_zeros:
                    add_parts(sums, b2, y, offsets, token_at, weight_at, slot, acc2, e, ho)
                else:
                    layer2(h, w2, b2, y, offsets, token_at, weight_at, acc2, e, ho, 0, 1)
            elif panels:
                for g in range((offsets[e + 1] - offsets[e] + MR - 1) // MR):
                    layer2(h, w2, b2, y, offsets, token_at, weight_at, acc2, e, ho, g, MR)

    @T.macro
    def route(logits, idx, gate, t):
        score = T.decl_buffer((experts,), "float32")
        best = T.decl_buffer((2,), "float32")
        taken = T.decl_buffer((1,), "int32")
        # score[e]: softmax(logits[t])[e] (before) or logits[t, e] (after); best: the max, then the sum
        best[0] = logits[t, 0]
        for e in range(1, experts):
            best[0] = T.max(best[0], logits[t, e])
        best[1] = T.float32(0)
        for e in range(experts):
            if before:
                score[e] = T.exp(logits[t, e] - best[0])
                best[1] = best[1] + score[e]
            else:
                score[e] = logits[t, e]
        if before:
            for e in range(experts):
                score[e] = score[e] / best[1]
        # k passes, each taking the largest score not yet taken (strictly larger: ties go to the lower id)
        for j in range(k):
            idx[t, j] = -1
            for e in range(experts):
                taken[0] = 0
                for i in range(j):
                    if idx[t, i] == e:
                        taken[0] = 1
                if taken[0] == 0:
                    if idx[t, j] < 0:
                        idx[t, j] = e
                        gate[t, j] = score[e]
                    elif score[e] > gate[t, j] or (T.isnan(score[e]) and not T.isnan(gate[t, j])):
                        # NaN counts as the largest, as in ONNX Runtime's TopK
                        idx[t, j] = e
                        gate[t, j] = score[e]
        if before:
            if normalize:
                best[1] = T.float32(0)
                for j in range(k):
                    best[1] = best[1] + gate[t, j]
                for j in range(k):
                    gate[t, j] = gate[t, j] / best[1]
        else:  # softmax over the k chosen logits, the first of which is the largest
            best[1] = T.float32(0)
            for j in range(k):
                gate[t, j] = T.exp(gate[t, j] - score[idx[t, 0]])
                best[1] = best[1] + gate[t, j]
            for j in range(k):
                gate[t, j] = gate[t, j] / best[1]

    @T.macro
    def body(x, logits, w1, b1, w2, w2r, b2, y):
        idx = T.alloc_buffer((tokens, k), "int32")
        gate = T.alloc_buffer((tokens, k), "float32")
        # 0. the router, per token: the test is a Python bool for a static token count, decided
        # here; a symbolic count decides when the kernel runs
        if tokens * experts > SERIAL_ROUTING_SCORES:
            for t in T.parallel(tokens):
                route(logits, idx, gate, t)
        else:
            for t in range(tokens):
                route(logits, idx, gate, t)
        offsets = T.alloc_buffer((experts + 1,), "int32")
        fill = T.alloc_buffer((experts,), "int32")
        token_at = T.alloc_buffer((pairs,), "int32")
        weight_at = T.alloc_buffer((pairs,), "float32")
        h = T.alloc_buffer((pairs, ffn), "float32")
        # 1. counting sort of (token, slot) by expert
        for e in range(experts + 1):
            offsets[e] = 0
        for t, j in T.grid(tokens, k):
            offsets[idx[t, j] + 1] = offsets[idx[t, j] + 1] + 1
        for e in range(experts):
            offsets[e + 1] = offsets[e + 1] + offsets[e]
            fill[e] = offsets[e]
        for t, j in T.grid(tokens, k):
            token_at[fill[idx[t, j]]] = t
            weight_at[fill[idx[t, j]]] = gate[t, j]
            fill[idx[t, j]] = fill[idx[t, j]] + 1
        # (without skip_zeros these three are unused: one element each)
        single = T.alloc_buffer((singles,) if skip_zeros else (1,), "int32")  # the single-row experts, in order
        slot = T.alloc_buffer((experts,) if skip_zeros else (1,), "int32")  # each one's place in that list
        sums = T.alloc_buffer((parts, singles, hidden) if skip_zeros else (1,), "float32")
        count = T.alloc_buffer((1,), "int32")
        count[0] = 0
        if skip_zeros:
            for e in range(experts):
                if offsets[e + 1] - offsets[e] == 1:
                    single[count[0]] = e
                    slot[e] = count[0]
                    count[0] = count[0] + 1
        # 2. first layer of the active experts, parallel over column tiles of F; with skip_zeros,
        # over `parts` ranges of those tiles, and each task goes on to the W2 rows of its own
        # columns for the single-row experts (their second layer needs no other task's h)
        for part in T.parallel(parts):
            acc = T.decl_buffer((MR, wt), "float32", scope="local")
            for fo in T.serial(tiles * part // parts, tiles * (part + 1) // parts):
                for e in range(experts):
                    if offsets[e + 1] - offsets[e] == 1:  # one row: no clamped copies to compute
                        layer1(x, w1, b1, h, offsets, token_at, acc, e, fo, 0, 1)
                    else:
                        for g in range((offsets[e + 1] - offsets[e] + MR - 1) // MR):
                            layer1(x, w1, b1, h, offsets, token_at, acc, e, fo, g, MR)
            if skip_zeros:
                gather_rows(h, w2r, sums, offsets, single, count[0], part, tiles * part // parts * ft,
                            tiles * (part + 1) // parts * ft)
        # 3. second layer, weighted, scattered back to token order; parallel over tiles of H (on
        # the calling thread when every expert has a single row: then it only adds the parts)
        if skip_zeros and T.Cast("int64", count[0]) == pairs:
            for ho in T.serial(hidden // ht):
                second_layer(h, w2, b2, y, offsets, token_at, weight_at, slot, sums, ho)
        else:
            for ho in T.parallel(hidden // ht):
                second_layer(h, w2, b2, y, offsets, token_at, weight_at, slot, sums, ho)

    if not skip_zeros:
        @T.prim_func(private=True, s_tir=True)
        def kernel(x: T.Buffer((tokens, hidden), "float32"), logits: T.Buffer((tokens, experts), "float32"),
                   w1: T.Buffer((experts, ffn // ft, hidden, wt), "float32"),
                   b1: T.Buffer((experts, width1), "float32"), w2: T.Buffer((experts, hidden // ht, ffn, ht), "float32"),
                   b2: T.Buffer((experts, hidden), "float32"), y: T.Buffer((tokens, hidden), "float32")):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            body(x, logits, w1, b1, w2, None, b2, y)
    elif panels:
        @T.prim_func(private=True, s_tir=True)
        def kernel(x: T.Buffer((tokens, hidden), "float32"), logits: T.Buffer((tokens, experts), "float32"),
                   w1: T.Buffer((experts, ffn // ft, hidden, wt), "float32"),
                   b1: T.Buffer((experts, width1), "float32"), w2: T.Buffer((experts, hidden // ht, ffn, ht), "float32"),
                   w2r: T.Buffer((experts, ffn, hidden), "float32"),
                   b2: T.Buffer((experts, hidden), "float32"), y: T.Buffer((tokens, hidden), "float32")):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            body(x, logits, w1, b1, w2, w2r, b2, y)
    else:
        @T.prim_func(private=True, s_tir=True)
        def kernel(x: T.Buffer((tokens, hidden), "float32"), logits: T.Buffer((tokens, experts), "float32"),
                   w1: T.Buffer((experts, ffn // ft, hidden, wt), "float32"),
                   b1: T.Buffer((experts, width1), "float32"), w2r: T.Buffer((experts, ffn, hidden), "float32"),
                   b2: T.Buffer((experts, hidden), "float32"), y: T.Buffer((tokens, hidden), "float32")):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            body(x, logits, w1, b1, None, w2r, b2, y)

    return kernel


def moe_kernel_cuda(tokens, hidden: int, ffn: int, experts: int, k: int, activation: str, gated: bool = False,
                    bind: bool = True, threads: int = 128):
    """The CUDA kernel: the same three steps as three launches, one thread per output element.

    1. counting sort on one thread (T x k small integers): positions grouped by expert, and for
       each (token, slot) its position;
    2. ``h[pos, f]``: a thread per element, reading ``x[token]`` and W1[e]'s column f (threads
       of a warp read adjacent columns: coalesced);
    3. ``y[t, v] = sum over the k slots of weight * (h[pos] @ W2[e] + b2[e])[v]``, a thread per
       element, slots in order.
    Only the experts chosen are read. Not tiled for the GPU's memory hierarchy yet, and not run
    here (no GPU lent): ``bind=False`` makes the thread loops serial, a CPU build of the same
    arithmetic for tests."""
    act = _activation(activation)
    loop = _gpu_loop(bind)
    pairs = tokens * k
    width1 = 2 * ffn if gated else ffn
    blocks1 = (pairs * ffn + threads - 1) // threads
    blocks2 = (tokens * hidden + threads - 1) // threads

    @T.prim_func(private=True, s_tir=True)
    def kernel(x: T.Buffer((tokens, hidden), "float32"), idx: T.Buffer((tokens, k), "int32"),
               gate: T.Buffer((tokens, k), "float32"), w1: T.Buffer((experts, hidden, width1), "float32"),
               b1: T.Buffer((experts, width1), "float32"), w2: T.Buffer((experts, ffn, hidden), "float32"),
               b2: T.Buffer((experts, hidden), "float32"), y: T.Buffer((tokens, hidden), "float32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        fill = T.alloc_buffer((experts + 1,), "int32")
        token_at = T.alloc_buffer((pairs,), "int32")
        expert_at = T.alloc_buffer((pairs,), "int32")
        position = T.alloc_buffer((tokens, k), "int32")
        h = T.alloc_buffer((pairs, ffn), "float32")
        # 1. counting sort of (token, slot) by expert, on one thread
        for _b in loop(1, "blockIdx.x"):
            for _t in loop(1, "threadIdx.x"):
                for e in range(experts + 1):
                    fill[e] = 0
                for t, j in T.grid(tokens, k):
                    fill[idx[t, j] + 1] = fill[idx[t, j] + 1] + 1
                for e in range(experts):
                    fill[e + 1] = fill[e + 1] + fill[e]
                for t, j in T.grid(tokens, k):
                    position[t, j] = fill[idx[t, j]]
                    token_at[fill[idx[t, j]]] = T.Cast("int32", t)
                    expert_at[fill[idx[t, j]]] = idx[t, j]
                    fill[idx[t, j]] = fill[idx[t, j]] + 1
        # 2. the first layer, a thread per element of h
        for bo in loop(blocks1, "blockIdx.x"):
            for ti in loop(threads, "threadIdx.x"):
                acc = T.decl_buffer((2,), "float32", scope="local")
                if bo * threads + ti < pairs * ffn:
                    acc[0] = b1[expert_at[(bo * threads + ti) // ffn], (bo * threads + ti) % ffn]
                    if gated:
                        acc[1] = b1[expert_at[(bo * threads + ti) // ffn], ffn + (bo * threads + ti) % ffn]
                    for c in range(hidden):
                        acc[0] = acc[0] + x[token_at[(bo * threads + ti) // ffn], c] * w1[
                            expert_at[(bo * threads + ti) // ffn], c, (bo * threads + ti) % ffn]
                        if gated:
                            acc[1] = acc[1] + x[token_at[(bo * threads + ti) // ffn], c] * w1[
                                expert_at[(bo * threads + ti) // ffn], c, ffn + (bo * threads + ti) % ffn]
                    if gated:
                        h[(bo * threads + ti) // ffn, (bo * threads + ti) % ffn] = act(acc[0]) * acc[1]
                    else:
                        h[(bo * threads + ti) // ffn, (bo * threads + ti) % ffn] = act(acc[0])
        # 3. the second layer, weighted and summed over the k slots, a thread per element of y
        for bo in loop(blocks2, "blockIdx.x"):
            for ti in loop(threads, "threadIdx.x"):
                acc = T.decl_buffer((2,), "float32", scope="local")
                if bo * threads + ti < tokens * hidden:
                    acc[0] = T.float32(0)
                    for j in range(k):
                        acc[1] = b2[idx[(bo * threads + ti) // hidden, j], (bo * threads + ti) % hidden]
                        for c in range(ffn):
                            acc[1] = acc[1] + h[position[(bo * threads + ti) // hidden, j], c] * w2[
                                idx[(bo * threads + ti) // hidden, j], c, (bo * threads + ti) % hidden]
                        acc[0] = acc[0] + gate[(bo * threads + ti) // hidden, j] * acc[1]
                    y[(bo * threads + ti) // hidden, (bo * threads + ti) % hidden] = acc[0]

    return kernel


def _route(bb: relax.BlockBuilder, node: Node, logits):
    """The router as Relax ops: (expert ids [T, k] int32, their weights [T, k])."""
    k = int(node.attr("k"))
    if node.attr("softmax") == "before":
        top = bb.normalize(relax.op.topk(bb.normalize(relax.op.nn.softmax(logits, axis=-1)), k, axis=-1, dtype="int32"))
        weights = bb.normalize(relax.TupleGetItem(top, 0))
        if node.attr("normalize", 0):
            weights = bb.normalize(relax.op.divide(weights, relax.op.sum(weights, axis=-1, keepdims=True)))
    else:
        top = bb.normalize(relax.op.topk(logits, k, axis=-1, dtype="int32"))
        weights = bb.normalize(relax.op.nn.softmax(bb.normalize(relax.TupleGetItem(top, 0)), axis=-1))
    return bb.normalize(relax.TupleGetItem(top, 1)), weights


def _moe_signature(node: Node, x):
    """(tokens as an int or a fresh Var, its Relax dim, hidden, ffn, experts, k, activation, gated, name)."""
    experts, ffn, hidden = (int(d) for d in node.input(4).const.shape)
    count = x.ty.shape.values[0]
    static = isinstance(count, tvm.tirx.IntImm)
    tokens = int(count) if static else tvm.tirx.Var("tokens", "int64")
    k, activation, gated = int(node.attr("k")), node.attr("activation"), bool(node.attr("gated", 0))
    if not 1 <= k <= experts:
        raise CompileError(f"{node.name}: sparsec.MoE picks the top {k} of {experts} experts; k must be 1 to {experts}")
    name = f"moe_{tokens if static else 'dyn'}x{hidden}_e{experts}_f{ffn}_k{k}_{activation}{'_gated' * gated}"
    return tokens, count, hidden, ffn, experts, k, activation, gated, name


@register_lowering("sparsec", "MoE", targets=CPU_TARGETS)
def lower_moe(bb: relax.BlockBuilder, node: Node, inputs: list, attrs: dict):
    x, logits, w1, b1, w2, b2 = inputs[:6]
    tokens, count, hidden, ffn, experts, k, activation, gated, name = _moe_signature(node, x)
    skip = bool(node.attr("skip_zeros", 0))
    kernel = moe_kernel(tokens, hidden, ffn, experts, k, activation, gated, node.attr("softmax"),
                        bool(node.attr("normalize", 0)), skip)
    w1p, b1p, w2p = pack_expert_weights(node.input(2).const, node.input(3).const, node.input(4).const, gated)
    # with skip_zeros, W2 as it is ([E, F, H], rows whole) besides the panels, or instead of them at one token
    if not skip:
        w2_args = [relax.const(w2p)]
    elif len(kernel.params) == 7:
        w2_args = [w2]
    else:
        w2_args = [relax.const(w2p), w2]
    kernel = bb.add_func(kernel, name + ("_skip" if skip else ""))
    return relax.call_tir(kernel, [x, logits, relax.const(w1p), relax.const(b1p), *w2_args, b2],
                          relax.TensorType([count, hidden], "float32"))


@register_lowering("sparsec", "MoE", targets=("cuda",))
def lower_moe_cuda(bb: relax.BlockBuilder, node: Node, inputs: list, attrs: dict):
    x, logits, w1, b1, w2, b2 = inputs[:6]
    tokens, count, hidden, ffn, experts, k, activation, gated, name = _moe_signature(node, x)
    idx, weights = _route(bb, node, logits)
    kernel = bb.add_func(moe_kernel_cuda(tokens, hidden, ffn, experts, k, activation, gated), name + "_cuda")
    return relax.call_tir(kernel, [x, idx, weights, w1, b1, w2, b2], relax.TensorType([count, hidden], "float32"))


def pack_expert_weights(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, gated: bool = False):
    """W1 [E, H, F] -> [E, F/ft, H, ft] and W2 [E, F, H] -> [E, H/ht, F, ht]: each (expert,
    column tile) panel the kernel streams is contiguous (done once, at compile time). Gated W1
    [E, H, 2F] -> [E, F/ft, H, 2ft]: gate tile, then the matching up tile; b1 follows W1's order."""
    experts, ffn, hidden = w2.shape
    ft, ht = _ffn_tile(ffn, gated), _tile(hidden)
    halves = 2 if gated else 1
    # [E, H, halves, F/ft, ft] -> [E, F/ft, H, halves, ft]
    w1p = w1.reshape(experts, hidden, halves, ffn // ft, ft).transpose(0, 3, 1, 2, 4)
    b1p = b1.reshape(experts, halves, ffn // ft, ft).transpose(0, 2, 1, 3)
    w2p = w2.reshape(experts, ffn, hidden // ht, ht).transpose(0, 2, 1, 3)
    return (np.ascontiguousarray(w1p).reshape(experts, ffn // ft, hidden, halves * ft),
            np.ascontiguousarray(b1p).reshape(experts, halves * ffn), np.ascontiguousarray(w2p))
