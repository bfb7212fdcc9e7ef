"""CPU schedule rules (dlight-style) for what the default CPU pipeline leaves as naive loops.

- ``CPUMatmul``: any GEMM-like block (MatMul, Gemm, batched MatMul, including transposed operands)
  normalised to C[S, I, J] += A[S, I, K] * B[S, J, K], register-tiled MR x NR with the NR axis
  vectorised, constant weights packed into [N/NR, K, NR] panels at compile time, accumulated in a
  local tile, the fused epilogue (bias, activation, residual) applied when the tile is written
  back, parallel over tiles; one-row products as vector-matrix products.
- ``CPUConv``: NCHW convolutions (grouped, depthwise) as channel x vector register tiles.
- ``CPURowReduction``: row-wise reduction chains (softmax, layer norm, RMSNorm) with every
  reduction over the rows' last axis vectorised (partial sums in vector lanes, then one short sum).
- ``CPUFallback``: everything else: spatial producers inlined, leading data-parallel loops of
  each block fused and run in parallel, the innermost loop vectorised when its extent allows.
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import get_root_block, normalize_prim_func
from tvm.s_tir.dlight.analysis.common_analysis import get_sblockrealize
from tvm.s_tir.dlight.analysis.common_analysis import collect_vars_used_in_prim_expr
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.s_tir.dlight.gpu.matmul import get_index_map, get_reduction_blocks
from tvm.target import Target

from ..serial_when_small import SERIAL_IF
from ..targets import host_vector_lanes, host_vector_registers


def _static(extent) -> int | None:
    return int(extent.value) if isinstance(extent, tirx.IntImm) else None


def _is_cpu(target: Target) -> bool:
    return target.kind.name in ("llvm", "c")


def _lanes(target: Target) -> int:
    return host_vector_lanes() if target.kind.name == "llvm" else 4


def _vector_registers(target: Target) -> int:
    return host_vector_registers() if target.kind.name == "llvm" else 16


# Work (multiply-adds, see _work) below which a kernel runs on the calling thread: TVM's pool,
# not spinning between kernels, takes tens of microseconds to wake, more than a small kernel saves
# by splitting. PP-OCR's classifier (~100 kernels of a few microseconds) went from 1.35x to 1.66x
# ORT with this; the detector, MiniLM and BERT-sized kernels are above it (unchanged, measured
# side by side on Zen 3, 2 threads). A threshold of 1M with elements counted once (not 8 times)
# made the detector's elementwise kernels serial: 25 -> 38 ms.
SERIAL_WORK = 1 << 20
ELEMENT_COST = 8


def _work(sch: s_tir.Schedule) -> int | None:
    """The kernel's work in multiply-adds: for each block, the product of its loops' extents
    (None if one is symbolic), an element written without a reduction counted as ELEMENT_COST
    (memory-bound elementwise code writes ~1 element per cycle where a vectorised GEMM does ~8
    multiply-adds)."""
    total = 0
    for block in sch.get_child_blocks(get_root_block(sch)):
        size = 1
        for loop in sch.get_loops(block):
            extent = _static(sch.get(loop).extent)
            if extent is None:
                return None
            size *= extent
        reduces = any(iv.iter_type == tirx.IterVar.CommReduce for iv in sch.get(block).iter_vars)
        total += size if reduces else size * ELEMENT_COST
    return total


def _work_expr(sch: s_tir.Schedule):
    """_work as an expression of the symbolic dims, or None where a loop's extent depends on
    another loop (the expression must be computable before the kernel's loops)."""
    total = None
    for block in sch.get_child_blocks(get_root_block(sch)):
        loops = [sch.get(loop) for loop in sch.get_loops(block)]
        loop_vars = [loop.loop_var for loop in loops]
        size = None
        for loop in loops:
            if any(_uses_var(loop.extent, v) for v in loop_vars):
                return None
            size = loop.extent if size is None else size * loop.extent
        reduces = any(iv.iter_type == tirx.IterVar.CommReduce for iv in sch.get(block).iter_vars)
        size = tirx.IntImm("int64", 1) if size is None else size
        size = size if reduces else size * ELEMENT_COST
        total = size if total is None else total + size
    return total


def _parallel(sch: s_tir.Schedule, loop) -> None:
    """``sch.parallel(loop)``, unless the whole kernel is too small to pay for waking the pool
    (with symbolic dims that is known only at run time: see _serial_when_small)."""
    work = _work(sch)
    if work is None or work >= SERIAL_WORK:
        sch.parallel(loop)


def _serial_when_small(sch: s_tir.Schedule) -> s_tir.Schedule:
    """A kernel with symbolic dims, scheduled: its parallel loops carry the run-time test that
    its work is below SERIAL_WORK (annotation SERIAL_IF), which the TIR pipeline turns into a
    serial copy of each loop taken when the test holds (serial_when_small.py). For row-wise and
    elementwise kernels; products keep both cores at one token, where streaming a weight is
    the work and two cores read it faster (an unpinned decoder's 512 x 1024 products: 0.083 ms
    serial, 0.046 parallel)."""
    if _work(sch) is not None:
        return sch
    expr = _work_expr(sch)
    if expr is None:
        return sch
    small = tirx.LT(tirx.Cast("int64", expr), tirx.IntImm("int64", SERIAL_WORK))

    def visit(node, mutator):
        node = mutator.default_mutate(node)
        if isinstance(node, tirx.For) and node.kind == tirx.ForKind.PARALLEL:
            annotations = {**node.annotations, SERIAL_IF: small}
            return tirx.For(node.loop_var, node.min, node.extent, node.kind, node.body, node.thread_binding, annotations)
        return node

    func = sch.mod["main"]
    return s_tir.Schedule(func.with_body(tvm_ffi.structural_mutate(func.body, [(object, visit)])))


def _try(fn, *args) -> bool:
    try:
        fn(*args)
        return True
    except Exception:  # noqa: BLE001 - schedule primitives signal "not applicable" by raising
        return False


def _loads_of(stmt, buffer) -> int:
    count = [0]

    def visit(node):
        if node.source.same_as(buffer):
            count[0] += 1

    tvm_ffi.structural_walk(stmt.body, (tvm.ir.TensorLoad, visit), order="post")
    return count[0]


def _fuse_epilogue(sch: s_tir.Schedule, block, loop) -> None:
    """Fold the element-wise consumers (bias, activation, residual) into ``block``'s write-back.

    A consumer that reads the result more than once (GELU: x * erf(x)) cannot be inlined (TVM
    0.27 rewrites only one of the loads); it runs at ``loop`` instead, on the tile just written.
    """
    while True:
        consumers = sch.get_consumers(block)
        if len(consumers) != 1:
            return
        consumer = consumers[0]
        written = sch.get(block).writes[0].source
        if _loads_of(sch.get(consumer), written) == 1 and _try(sch.reverse_compute_inline, consumer):
            continue
        for producer in sch.get_producers(consumer):  # fold the chain into the consumer first
            if not sch.get(producer).same_as(sch.get(block)):
                _try(sch.compute_inline, producer)
        if _try(sch.reverse_compute_at, consumer, loop):
            loops = sch.get_loops(consumer)
            _try(sch.vectorize, loops[-1])
        return


class _CPURule(ScheduleRule):
    """A dlight rule for CPU targets: ``schedule`` sees only PrimFuncs built for one."""

    def is_target_available(self, target: Target) -> bool:
        return _is_cpu(target)

    def apply(self, func, target: Target, _tunable: bool):
        if not isinstance(func, tirx.PrimFunc) or not _is_cpu(target):
            return None
        return self.schedule(func, target)

    def schedule(self, func: tirx.PrimFunc, target: Target):
        raise NotImplementedError


class CPUMatmul(_CPURule):
    def schedule(self, func: tirx.PrimFunc, target: Target):
        sch = s_tir.Schedule(func)
        blocks = sch.get_child_blocks(get_root_block(sch))
        reductions = get_reduction_blocks(sch, blocks)
        if reductions is None:
            return None
        main = reductions[0]
        if get_index_map(sch.get(main)) is None:
            # No row axis left (one row, legalised away): a vector-matrix product.
            return _vector_matrix(func, target)
        # Normalise to [S, I, J, K] (batch, rows, columns, reduction).
        reindex_a = sch.reindex(main, ("read", 0))
        reindex_b = sch.reindex(main, ("read", 1))
        reindex_c = sch.reindex(main, ("write", 0))
        matmul_map, a_map, b_map, c_map = get_index_map(sch.get(main))
        sch.transform_layout(reindex_a, ("write", 0), a_map)
        sch.transform_layout(reindex_b, ("write", 0), b_map)
        sch.transform_layout(reindex_c, ("read", 0), c_map)
        sch.transform_block_layout(main, matmul_map)
        s, i, j, k = sch.get_loops(main)
        m_extent, n_extent = _static(sch.get(i).extent), _static(sch.get(j).extent)
        lanes = _lanes(target)
        constant_b = _reads_constant_weight(sch, func, reindex_b)
        mr, nr = _gemm_tile(m_extent, n_extent, lanes, pad_columns=constant_b)
        pad_columns = n_extent is not None and n_extent % nr != 0
        if m_extent is None or n_extent is None or pad_columns:
            # Symbolic rows or columns are padded to whole tiles (zeros in, the extra results
            # dropped on the way out): no predicate inside the tile, which had made it an M x N
            # buffer in memory (2.6x slower than static rows), and no column tail for
            # reverse_compute_at to get wrong (it did: attention scores with a symbolic sequence).
            # So are the columns of a constant weight that the widest tile does not divide: its
            # panels are padded with zeros at compile time (see _pack_padded_panels).
            sch.pad_einsum(main, [1, mr if m_extent is None else 1, nr if n_extent is None or pad_columns else 1, 1])
        sch.compute_inline(reindex_a)
        sch.compute_inline(reindex_b)
        packed = _pack_padded_panels(sch, func, main, nr) if pad_columns else None
        for block in sch.get_producers(main):  # e.g. a transpose feeding the GEMM
            if packed is None or sch.get(block).name_hint != packed:
                _try(sch.compute_inline, block)
        if n_extent is not None and not pad_columns and nr > 1:
            packed = _pack_weight_panels(sch, func, main, nr)
        if pad_columns:
            n_extent += -n_extent % nr
        s, i, j, k = sch.get_loops(main)
        io, ii = sch.split(i, [None, mr])
        jo, ji = sch.split(j, [None, nr])
        k_extent = _static(sch.get(k).extent)
        order, block_tiles = _gemm_loop_order(m_extent, k_extent, n_extent, mr, nr)
        kc = _k_block(k_extent, nr) if order == "panels" and m_extent is not None else None
        if kc and _strip_tiles(m_extent, mr) < MIN_STRIP_TILES:
            kc = None  # (a panel slice reused by fewer tiles costs its strip round trips for nothing)
        reduction = k
        if kc:
            # K blocks whose K x NR slice of the panel stays in L1 while the row tiles pass over
            # it; the tile's partial sums live in a strip of MB x NR written back once, after the
            # last block. Without them the panel (K x NR: 72 KiB at K = 768) streamed from L2 for
            # every row tile (Zen 3, one thread, 128 x 768 x 768: 2.42 -> 2.18 ms, ORT 2.32).
            reduction, k = sch.split(k, [None, kc])
        if order == "rows":
            # All of B fits in L2 (short reductions: attention scores over a 32-wide head): row
            # tiles outermost, so each writes whole output rows once, in order. Panels outermost
            # wrote a 4 x 16 patch per tile, and the partial lines were fetched again by the next
            # panel: q @ k^T over [96, 128, 32] x [96, 32, 128], 3.9 -> 2.6 ms (ORT 2.1).
            sch.reorder(s, io, jo, k, ii, ji)
            outer = (s, io)
            tile_at = jo
        elif order == "row blocks":
            # Row blocks of A that stay in L2 while every column panel passes over them: without
            # them A streamed from L3 once per panel (64 panels of a 1024 x 384 x 1536 GEMM).
            # Column panels stay outer within a block, so a panel is reused by all of its row
            # tiles. The threads take contiguous runs of the fused (block, panel) loop.
            # (K blocks measured slower here: 1024 x 1536 x 384 lost 8%.)
            ib, io = sch.split(io, [None, block_tiles])
            sch.reorder(s, ib, jo, io, k, ii, ji)
            outer = (s, ib, jo)
            tile_at = io
        elif kc:
            # Column panels outermost (below), row tiles in strips of at most STRIP_ROWS rows.
            ib, io = sch.split(io, [None, _strip_tiles(m_extent, mr)])
            sch.reorder(s, jo, ib, reduction, io, k, ii, ji)
            outer = (s, jo, ib)
            tile_at = ib
        else:
            # Column panels outermost: a K x NR panel of B stays in cache while every row tile of
            # A passes over it, so B (the weights, usually the larger operand) is read once.
            sch.reorder(s, jo, io, k, ii, ji)
            outer = (s, jo, io)
            tile_at = io
        tile = sch.cache_write(main, 0, "local")
        sch.reverse_compute_at(tile, tile_at)
        _fuse_epilogue(sch, tile, tile_at)
        _parallel(sch, sch.fuse(*outer))
        sch.unroll(ii)
        _vectorize_by(sch, ji, lanes)
        return _finish_gemm(sch, target, main, reduction, tile, packed)


# Bytes of B's panel slice per K block (see CPUMatmul): 3/4 of a 32 KiB L1, the rest for the A
# rows. Zen 3, 128-row GEMMs of 768 x 768, 768 x 3072 and 3072 x 768, one and two threads: blocks
# of 256 (24 KiB) beat 128 and no blocking by 4-12%; 384 measured the same within noise.
K_BLOCK_BYTES = 24 * 1024
# Rows of the partial-sum strip of a K-blocked GEMM (a buffer of STRIP_ROWS x NR), and the fewest
# row tiles a strip must hold for K blocks to pay (each reuses the panel's slice once).
STRIP_ROWS = 128
MIN_STRIP_TILES = 4


def _k_block(k: int | None, nr: int) -> int | None:
    """The K block of the GEMM, a divisor of K (no partial block) whose K x NR slice of a weight
    panel fits K_BLOCK_BYTES, or None when K fits already or no divisor of at least 64 does."""
    budget = K_BLOCK_BYTES // (4 * nr)
    if k is None or k <= budget:
        return None
    return next((d for d in range(budget, 63, -1) if k % d == 0), None)


def _strip_tiles(m: int, mr: int) -> int:
    """Row tiles per partial-sum strip: a divisor of the tile count (no partial strip), at most
    STRIP_ROWS rows."""
    tiles = -(-m // mr)
    return next(d for d in range(max(1, min(tiles, STRIP_ROWS // mr)), 0, -1) if tiles % d == 0)


# Bytes of A per row block (see CPUMatmul): a quarter of a 512 KiB L2, with room for the column
# panel; measured on Zen 3 with 32, 64, 128 and 256 KiB: 128 KiB was fastest (1024-row GEMMs
# 0.85 -> 1.0x ORT with the 4 x 24 tile).
_ROW_BLOCK_BYTES = 128 * 1024
# B at most this large (half a 512 KiB L2) is kept whole in L2 while the row tiles pass.
_SMALL_B_BYTES = 256 * 1024
# The static side of B (K or N) at most this long when the other is symbolic: row tiles outermost.
SYMBOLIC_ROWS_B = 128
_L2_BYTES = 512 * 1024  # per core, Zen 3 (AVX-512 hosts have 1-2 MiB: the rules stay conservative)


def _gemm_loop_order(m: int | None, k: int | None, n: int | None, mr: int, nr: int) -> tuple[str, int]:
    """The GEMM's outer loop order, ``"rows"`` (row tiles outermost: all of B fits in L2),
    ``"row blocks"`` (blocks of row tiles, column panels inside) or ``"panels"`` (column panels
    outermost), and the row tiles per block."""
    static = n if k is None else k
    if (n is None) != (k is None) and static <= SYMBOLIC_ROWS_B:
        # Attention's products over a symbolic sequence: q @ k^T (K the head size) and p @ v (N
        # the head size): B is the sequence times the head size, in L2 at usual lengths.
        return "rows", 0
    if k is None or n is None:
        return "panels", 0
    if k * n * 4 <= _SMALL_B_BYTES:
        return "rows", 0
    tiles = _ROW_BLOCK_BYTES // (4 * k * mr)
    if m is None and tiles:
        # Symbolic rows: blocks of a fixed number of tiles, the last one partial (its tiles
        # guarded by their row, a test per tile), which is one block when the rows are few.
        return "row blocks", tiles
    if m is None or not tiles or -(-m // mr) <= tiles:
        return "panels", 0
    m_tiles = -(-m // mr)
    # a divisor of the tile count where one is near: no predicate on a last, partial block
    tiles = next((d for d in range(tiles, tiles // 2, -1) if m_tiles % d == 0), tiles)
    if not _row_blocks_pay(m, k, n, -(-m_tiles // tiles), n // nr):
        return "panels", 0
    return "row blocks", tiles


def _row_blocks_pay(m: int, k: int, n: int, blocks: int, panels: int) -> bool:
    """Row blocks re-read B once per block; column panels outermost re-read A once per panel.
    Blocks pay when A is well beyond L2 (a little over, most of it still hits) and B's re-reads
    cost less than A's. B's count half: its packed panels stream contiguously, A's rows are MR
    strided streams. (Zen 3, against ORT, blocks vs none: 1024 x 384 x 1536 1.03x vs 0.89x,
    1024 x 1536 x 384 0.94x vs 0.87x; the other way round 128 x 3072 x 768 0.62x vs 1.03x,
    128 x 768 x 3072 0.76x vs 0.96x, 128 x 1536 x 384 0.88x vs 0.96x.)"""
    a_bytes, b_bytes = 4 * m * k, 4 * k * n
    return a_bytes > 2 * _L2_BYTES and blocks * b_bytes // 2 < panels * a_bytes


def _gemm_tile(m: int | None, n: int | None, lanes: int, pad_columns: bool = False) -> tuple[int, int]:
    """(MR rows, NR columns) of the GEMM register tile for static or symbolic (None) M and N.

    MR x NR/lanes accumulators leave registers for one broadcast of A and the NR/lanes loads of
    B. Tiles are tried best first; each must divide a static extent (a tail tile would be
    predicated: the whole tile then lives in memory), and symbolic extents are padded to them;
    with ``pad_columns`` (B a constant weight, its panels padded at compile time) so is a static
    N that the tile does not divide, when that wastes at most 1/16 of the columns. AVX2 (16
    registers): 4 x 3 vectors needs 7 loads per 12 FMAs, 6 x 2 vectors 8 (on Zen 3, 1024 x 384 x
    1536: 4x24 130 GF/s, 6x16 111, 4x16 103; N = 1024 and 2048 padded to 4x24 rather than 4x16:
    2-14% faster). AVX-512 (32 registers): 8 x 2 vectors (measured: 8x32 beat 6x32, 4x64 and
    12x32)."""
    tiles = [(8, 2), (4, 2)] if lanes >= 16 else [(4, 3), (6, 2), (4, 2)]
    for mr, vectors in tiles:
        width = vectors * lanes
        columns_fit = n is None or n % width == 0 or pad_columns and (-n % width) * 16 <= n
        if (m is None or m % mr == 0) and columns_fit:
            return (1 if m == 1 else mr), width
    mr = 1 if m == 1 else tiles[0][0] if m is None else next((r for r, _ in tiles if m % r == 0), 4)
    # A column tile that divides N leaves no column tail: TVM 0.27's reverse_compute_at drops
    # the column predicate of the write-back when rows are fused from several axes.
    nr = 2 * lanes if n is None else next(f for f in (2 * lanes, lanes, 8, 4, 2, 1) if n % f == 0)
    return mr, nr


# A block with this annotation is split out by relax.transform.SplitLayoutRewritePreproc and, its
# input being a constant weight, folded at compile time: the weight is stored packed.
LAYOUT_REWRITE = "meta_schedule.layout_rewrite_preproc"


def _constant_weights(func) -> list:
    """The PrimFunc's parameters bound to constant weights (layout free: sparsec may re-lay them out)."""
    layout_free = {int(i) for i in func.attrs.get("layout_free_buffers", [])} if func.attrs else set()
    return [func.params[i] for i in layout_free if isinstance(func.params[i], tirx.Buffer)]


def _pack(sch: s_tir.Schedule, main, index: int, index_map) -> str:
    """Store the block's ``index``-th read (a constant weight) re-laid out by ``index_map``; the
    packing block, split out and folded, runs once at compile time. Returns its name."""
    cache = sch.cache_read(main, index, "global")
    sch.annotate(cache, LAYOUT_REWRITE, True)
    sch.transform_layout(main, ("read", index), index_map)
    return sch.get(cache).name_hint


def _reads_constant_weight(sch: s_tir.Schedule, func, reindex) -> bool:
    """Whether the reindex block copies a constant weight (2-D, or 2-D with trailing unit dims)."""
    source = sch.get(reindex).reads[0].source
    return (any(source.same_as(c) for c in _constant_weights(func)) and len(source.shape) >= 2
            and all(_static(d) == 1 for d in source.shape[2:]))


def _pack_padded_panels(sch: s_tir.Schedule, func, main, nr: int) -> str:
    """Pack the zero-padded weight that pad_einsum made for ``main`` (its producer of B[S, J, K])
    into ``[S, J / nr, K, nr]`` panels; the padding block itself becomes the compile-time packing
    step, so the zeros cost nothing per call. Returns its name."""
    constant = _constant_weights(func)
    pad = next(p for p in sch.get_producers(main)
               if any(r.source.same_as(c) for r in sch.get(p).reads for c in constant))
    sch.annotate(pad, LAYOUT_REWRITE, True)
    sch.transform_layout(pad, ("write", 0), lambda s, n, k: (s, n // nr, k, n % nr))
    return sch.get(pad).name_hint


def _pack_weight_panels(sch: s_tir.Schedule, func, main, nr: int) -> str | None:
    """Store a constant 2-D weight B as ``[N / nr, K, nr]`` panels, so the micro-kernel reads
    each K x nr panel contiguously instead of nr floats from K rows N apart. Returns the name of
    the packing block, or None when B is not a constant weight."""
    constant = _constant_weights(func)
    stmt = sch.get(main)
    j_var, k_var = (iv.var for iv in stmt.iter_vars[-2:])  # [..., J, K]
    for index, region in enumerate(stmt.reads):
        buffer = region.source
        # 2-D, or 2-D with trailing unit dims: a 1x1 convolution's W[F, C, 1, 1] (unpacked, each
        # vector of B was gathered from NR rows: 192 -> 192 at 20x20 0.50x ORT on AVX2, now 1.05x)
        if (not any(buffer.same_as(c) for c in constant) or len(buffer.shape) < 2
                or any(_static(d) != 1 for d in buffer.shape[2:])):
            continue
        starts = [r.min for r in region.region]
        if _uses_var(starts[0], k_var) and _uses_var(starts[1], j_var):
            return _pack(sch, main, index, lambda k, n, *unit: (n // nr, k, n % nr, *unit))  # B[K, N] (MatMul)
        if _uses_var(starts[0], j_var) and _uses_var(starts[1], k_var):
            return _pack(sch, main, index, lambda n, k, *unit: (n // nr, k, n % nr, *unit))  # B[N, K] (Gemm transB)
        return None
    return None


def _vector_matrix(func, target: Target):
    """``y[.., j] = sum_k x[.., k] * W[k, j]`` (+ epilogue): memory-bound, so every column tile
    keeps several vector accumulators in flight and reads W's rows contiguously."""
    sch = s_tir.Schedule(func)
    blocks = sch.get_child_blocks(get_root_block(sch))
    reductions = get_reduction_blocks(sch, blocks)
    if not reductions or len(reductions) != 1:
        return None
    main = reductions[0]
    stmt = sch.get(main)
    kinds = [iv.iter_type for iv in stmt.iter_vars]
    if kinds.count(tirx.IterVar.CommReduce) != 1 or kinds[-1] != tirx.IterVar.CommReduce:
        return None
    loops = sch.get_loops(main)
    if len(loops) != len(kinds) or len(loops) < 2:
        return None
    *spatial, j, k = loops
    n = _static(sch.get(j).extent)
    lanes = _lanes(target)
    # Column panels of a width dividing N (no tail); narrower than a vector when N is not a multiple
    # of the lanes (a 1000-word vocabulary: 8): still contiguous panel reads, unlike the fallback's
    # column-strided loop (1 x 512 x 1000: 0.34 ms -> 0.045 ms, measured).
    nr = next((f for f in (4 * lanes, 2 * lanes, lanes, 8, 4, 2) if n is not None and n % f == 0), None)
    if nr is None:
        return None
    # Memory-bound: the weight's rows must be read along j (contiguous), one vector per lane group.
    read_b = stmt.reads[1] if len(stmt.reads) > 1 else None
    j_var = stmt.iter_vars[len(loops) - 2].var
    if read_b is None or not _uses_var(read_b.region[-1].min, j_var):
        return None
    packed = _pack_weight_panels(sch, func, main, nr)
    jo, ji = sch.split(j, [None, nr])
    sch.reorder(jo, k, ji)
    tile = sch.cache_write(main, 0, "local")
    sch.reverse_compute_at(tile, jo)
    _fuse_epilogue(sch, tile, jo)
    outer = sch.fuse(*spatial, jo) if spatial else jo
    _parallel(sch, outer)
    sch.vectorize(ji)
    return _finish_gemm(sch, target, main, k, tile, packed)


def _vectorize_by(sch: s_tir.Schedule, loop, lanes: int) -> None:
    """Vectorise ``loop``; one whose extent is a multiple of the vector width but not a power of two
    (24 floats: three AVX2 vectors) is split into unrolled whole vectors first: LLVM legalises a
    <24 x float> vector into code 8x slower (measured on a 4 x 24 GEMM tile)."""
    extent = _static(sch.get(loop).extent)
    if extent and extent > lanes and extent % lanes == 0 and extent & (extent - 1):
        outer, loop = sch.split(loop, [None, lanes])
        sch.unroll(outer)
    sch.vectorize(loop)


def _finish_gemm(sch: s_tir.Schedule, target: Target, main, k, tile, packed: str | None) -> s_tir.Schedule:
    """Common tail of the GEMM schedules: split off the zero-init, vectorise it and the tile's
    write-back; what could not be fused (a reduction after the GEMM) gets the fallback."""
    lanes = _lanes(target)
    init = sch.decompose_reduction(main, k)
    _vectorize_by(sch, sch.get_loops(init)[-1], lanes)
    write_loops = sch.get_loops(tile)
    if len(write_loops) >= 2:
        _try(_vectorize_by, sch, write_loops[-1], lanes)
    _schedule_remaining(sch, target, skip=_scheduled_names(sch, main) | ({packed} if packed else set()))
    return sch


class CPUConv(_CPURule):
    """2-D convolution (NCHW, grouped and depthwise included): out[n, f, y, x] summed over
    (c, ky, kx). Tiles FR output channels x one vector of output columns in registers, with the
    reduction loops outside the tile; parallel over (n, channel tiles, rows), or (n, channel
    tiles) for a depthwise convolution padded per tile; epilogue fused."""

    def schedule(self, func: tirx.PrimFunc, target: Target):
        sch = s_tir.Schedule(func)
        reductions = get_reduction_blocks(sch, sch.get_child_blocks(get_root_block(sch)))
        if not reductions or len(reductions) != 1:
            return None
        main = reductions[0]
        stmt = sch.get(main)
        kinds = "".join("S" if iv.iter_type == tirx.IterVar.DataPar else "R" for iv in stmt.iter_vars)
        loops = sch.get_loops(main)
        if kinds != "SSSSRRR" or len(loops) != 7 or len(stmt.writes[0].source.shape) != 4:
            return None
        n, f, y, x, rc, ry, rx = loops
        f_extent, x_extent = _static(sch.get(f).extent), _static(sch.get(x).extent)
        if f_extent is None or x_extent is None:
            return None
        lanes = _lanes(target)
        pointwise = _static(sch.get(ry).extent) == 1 and _static(sch.get(rx).extent) == 1 and _static(sch.get(rc).extent) != 1
        if pointwise and x_extent % lanes:
            # A 1x1 convolution is a GEMM; unless its rows split into whole vectors, CPUMatmul's
            # packed panels run it faster (192 -> 192 at 20x20: 0.24 vs 0.82 ms; 16 -> 32 at
            # 160x160 the other way round: 0.40 ms here vs 1.6 ms as a GEMM).
            return None
        # Producers with padding stay materialised: inlined, the tile's loads would be guarded.
        padded = [b for b in sch.get_producers(main) if "if_then_else" in str(sch.get(b).body)]
        for block in sch.get_producers(main):
            if not any(sch.get(block).same_as(sch.get(p)) for p in padded):
                _try(sch.compute_inline, block)
        # Output columns per vector: the widest power of two that divides the row. A row of 20
        # split into vectors of 8 left a predicated tail that kept the whole tile from being
        # vectorised: PP-OCR's 3x3 conv 96 -> 24 at 20x20 ran 0.94 ms with 8-wide vectors and
        # 0.40 ms with 4-wide (ORT 0.30), at 10x10 0.84 -> 0.31 ms (2-wide), its depthwise 5x5
        # over 192 channels at 20x20 0.49 -> 0.28 ms (ORT 0.25), side by side on Zen 3.
        # (A row narrower than a vector is one vector of its width, as before.)
        xv = x_extent if x_extent < lanes else next(v for v in (lanes, 8, 4, 2, 1) if v <= lanes and x_extent % v == 0)
        fr, xm = _conv_tile(f_extent, x_extent, xv, _vector_registers(target))
        # Depthwise (one input channel per output channel): each channel of the tile reads its own
        # input rows, so channels share nothing and the tile should span the row instead.
        pad_block = padded[0] if len(padded) == 1 else None
        depthwise = _static(sch.get(rc).extent) == 1 and _channel_follows_output(stmt, pad_block, sch)
        stride = _column_stride(stmt, pad_block, sch)
        # A depthwise convolution gets the row tile at stride 2 as well: its vectors read every
        # other padded column, which the TIR pipeline (strided_loads) turns into contiguous loads
        # and a shuffle. Side by side on Zen 3 (ms, median / min of 60, ORT in brackets) against
        # the padded input stored as even and odd columns apart, which this replaced: 64 channels
        # at 112x112 1.04 / 0.68 -> 0.85 / 0.44 (0.55), 96 at 112x112 1.37 / 1.14 -> 1.10 / 0.89
        # (0.90), 192 at 28x28 0.164 -> 0.152 (0.129), 144 at 56x56 equal (0.65 vs 0.39).
        row_tile = depthwise and stride in (1, 2)
        if row_tile:
            xv, fr, xm = _depthwise_tile(f_extent, x_extent, lanes, xv)
        packed = _pack_conv_weights(sch, func, main, fr) if fr > 1 else None
        fo, fi = sch.split(f, [None, fr])
        xo, xm_loop, xi = sch.split(x, [None, xm, xv])
        chunk = _conv_channel_chunk(_static(sch.get(rc).extent), _static(sch.get(ry).extent),
                                    _static(sch.get(rx).extent), x_extent, fr)
        if chunk and x_extent > xm * xv:
            # Channels in chunks whose input rows stay in L1 while every column tile of the row
            # passes over them; the row's accumulators live in a local buffer across chunks.
            rco, rci = sch.split(rc, [None, chunk])
            sch.reorder(n, fo, y, rco, xo, rci, ry, rx, fi, xm_loop, xi)
            tile = sch.cache_write(main, 0, "local")
            sch.reverse_compute_at(tile, y)
            _fuse_epilogue(sch, tile, y)
            first = rco
        elif row_tile and 5 <= (_static(sch.get(ry).extent) or 0) <= 7 and (_static(sch.get(y).extent) or 1) % 2 == 0 \
                and 2 * fr * xm * -(-xv // lanes) <= _vector_registers(target) * 3 // 4:
            # Two output rows per tile, the kernel window unrolled: a 5x5 window's input rows
            # serve both rows from registers (4 of each row's 5 are shared). Side by side on
            # Zen 3: 192 channels at 20x20 0.26-0.28 -> 0.17-0.19 ms (ORT 0.20-0.22), 96 at
            # 40x40 0.235 -> 0.183, 240 at 10x10 0.114 -> 0.085; 3x3 windows gained nothing.
            # (At most 7x7 windows, unrolled, and accumulators within 3/4 of the registers, as
            # _conv_tile: 12 on AVX2, the 2 x 2 x 3-vector tile of the rows of 20 above.)
            y, yi = sch.split(y, [None, 2])
            sch.reorder(n, fo, y, xo, rc, ry, rx, yi, fi, xm_loop, xi)
            tile = sch.cache_write(main, 0, "local")
            sch.reverse_compute_at(tile, xo)
            _fuse_epilogue(sch, tile, xo)
            first = rc
            sch.unroll(ry)
            sch.unroll(rx)
            sch.unroll(yi)
        else:
            sch.reorder(n, fo, y, xo, rc, ry, rx, fi, xm_loop, xi)
            tile = sch.cache_write(main, 0, "local")
            sch.reverse_compute_at(tile, xo)
            _fuse_epilogue(sch, tile, xo)
            first = rc
        # A depthwise tile's padded input is its own channels: padded per channel tile inside the
        # parallel loop (in L1, no pass of its own) when there are tiles enough to share out.
        tiles = (_static(sch.get(n).extent) or 0) * (f_extent // fr)
        local_pad = depthwise and bool(padded) and tiles >= 16
        if local_pad:
            outer = sch.fuse(n, fo)
            _parallel(sch, outer)
        else:
            _parallel(sch, sch.fuse(n, fo, y))
        sch.unroll(fi)
        sch.unroll(xm_loop)
        _try(sch.vectorize, xi)
        init = sch.decompose_reduction(main, first)
        _try(sch.vectorize, sch.get_loops(init)[-1])
        write_loops = sch.get_loops(tile)
        if len(write_loops) >= 2:
            _try(sch.vectorize, write_loops[-1])
        for block in padded:
            if local_pad:
                sch.compute_at(block, outer)
                _try(sch.vectorize, sch.get_loops(block)[-1])  # the border lanes stay guarded
                continue
            pad_loops = sch.get_loops(block)
            if len(pad_loops) >= 2:
                _parallel(sch, sch.fuse(*pad_loops[:-1]))
        skip = _scheduled_names(sch, main) | {sch.get(b).name_hint for b in padded} | ({packed} if packed else set())
        _schedule_remaining(sch, target, skip=skip)
        return sch


def _pack_conv_weights(sch: s_tir.Schedule, func, main, fr: int) -> str | None:
    """Store a constant weight W[F, C, KY, KX] as ``[F / fr, C, KY, KX, fr]``: the FR weights
    that each reduction step broadcasts then lie side by side in one cache line instead of
    C x KY x KX floats apart. Returns the packing block's name (folded at compile time)."""
    constant = _constant_weights(func)
    stmt = sch.get(main)
    f_var = stmt.iter_vars[1].var
    for index, region in enumerate(stmt.reads):
        buffer = region.source
        if (any(buffer.same_as(c) for c in constant) and len(buffer.shape) == 4
                and _static(buffer.shape[0]) is not None and _static(buffer.shape[0]) % fr == 0
                and region.region[0].min.same_as(f_var)):
            return _pack(sch, main, index, lambda f, c, ky, kx: (f // fr, c, ky, kx, f % fr))
    return None


_L1_BYTES = 32 << 10


def _conv_channel_chunk(channels, ky, kx, width, fr) -> int | None:
    """Input channels per chunk of the reduction, or None to keep it whole. For one output row
    the tile loop reads KY input rows of every channel (and FR x KY x KX weights per channel)
    once per column tile; when that exceeds L1 the rows come from L2 on every pass. Chunks of
    channels whose rows fill at most a quarter of L1 are reused from L1 instead: PP-OCR's 3x3
    conv 96 -> 24 at 80x80 (96 x 3 rows of 82 floats, 94 KB), 4.9 -> 3.2 ms in chunks of 8
    (ORT 2.7 ms), and 24 -> 24 at 160x160 3.3 -> 3.2 ms, measured side by side on Zen 3."""
    if None in (channels, ky, kx, width) or channels <= 1:
        return None
    per_channel = 4 * (ky * (width + kx - 1) + fr * ky * kx)
    if channels * per_channel <= _L1_BYTES:
        return None
    fits = max(1, _L1_BYTES // 4 // per_channel)
    chunk = max(d for d in range(1, min(fits, channels) + 1) if channels % d == 0)
    return chunk if chunk < channels else None


def _channel_follows_output(stmt, pad_block, sch) -> bool:
    """Whether the convolution reads input channel f for output channel f (depthwise), not a
    channel shared by all outputs (a one-channel image under a group-1 convolution)."""
    if pad_block is None:
        return False
    source = sch.get(pad_block).writes[0].source
    output_channel = stmt.iter_vars[1].var
    return any(_coefficient(region.region[1].min, output_channel) == 1
               for region in stmt.reads if region.source.same_as(source))


def _column_stride(stmt, pad_block, sch) -> int | None:
    """The stride along the output columns of a convolution's read of its padded input (the
    coefficient of the column variable in the last index), or None."""
    if pad_block is None:
        return None
    source = sch.get(pad_block).writes[0].source
    column = stmt.iter_vars[3].var
    for region in stmt.reads:
        if region.source.same_as(source):
            return _coefficient(region.region[-1].min, column)
    return None


def _coefficient(expr, var) -> int | None:
    """c in ``expr = c * var + (terms without var)`` for sums of products with constants; None
    for anything else in which ``var`` appears."""
    if isinstance(expr, tirx.Var):
        return 1 if expr.same_as(var) else 0
    if isinstance(expr, tirx.IntImm):
        return 0
    if isinstance(expr, tirx.Cast):
        return _coefficient(expr.value, var)
    if isinstance(expr, (tirx.Add, tirx.Sub)):
        a, b = _coefficient(expr.a, var), _coefficient(expr.b, var)
        return None if a is None or b is None else a + b if isinstance(expr, tirx.Add) else a - b
    if isinstance(expr, tirx.Mul):
        for factor, other in ((expr.a, expr.b), (expr.b, expr.a)):
            if isinstance(other, tirx.IntImm):
                c = _coefficient(factor, var)
                return None if c is None else c * int(other.value)
    return None if any(v.same_as(var) for v in collect_vars_used_in_prim_expr(expr)) else 0


def _depthwise_tile(channels: int, width: int, lanes: int, vector: int) -> tuple[int, int, int]:
    """(XV, FR, XM) for a depthwise convolution (stride 1 or 2): two channels (each with its own input
    rows and weights) by the whole output row, as whole vectors where the row splits into them,
    else as one vector of the row's width up to 4 vectors (LLVM splits a 14-wide one into 8-, 4-
    and 2-lane pieces). The general tile took 8 channels x 2-lane vectors for rows of 14: 16
    loads per 8 FMAs of 2 lanes. Side by side on Zen 3, 3x3 over 576 channels at 14x14: 0.36 ->
    0.17 ms (ORT 0.20) with the padding done per channel tile as well."""
    fr = 2 if channels % 2 == 0 else 1
    if width % lanes == 0:
        vectors = width // lanes
        return lanes, fr, next(xm for xm in (4, 3, 2, 1) if vectors % xm == 0)
    if lanes < width <= 4 * lanes:
        return width, fr, 1
    return vector, fr, 1


def _conv_tile(channels: int, width: int, vector: int, registers: int = 32) -> tuple[int, int]:
    """(FR output channels, XM vectors of output columns) per register tile. Each step of the
    reduction loads XM input vectors and broadcasts FR weights for FR x XM FMAs: the larger
    FR * XM / (FR + XM), the fewer loads per FMA. The FR x XM accumulators, the XM inputs and a
    broadcast weight must fit the vector registers, with room to spare (24 accumulators of
    AVX-512's 32 registers, 12 of AVX2's 16): a tile that spills runs far slower (PP-OCR's
    3x3 conv 96 -> 24 at 80x80 on AVX2: 5.5 ms with a 4 x 5 tile, 3.5 ms with 6 x 2).
    (One vector of 8 channels, the old tile, issues 9 loads for 8 FMAs: load-bound.)"""
    best = (1, 1)
    for fr in (8, 6, 4, 3, 2, 1):
        for xm in (6, 5, 4, 3, 2, 1):
            if channels % fr or (xm > 1 and width % (xm * vector)):
                continue
            if fr * xm > registers * 3 // 4 or fr * xm + xm + 1 > registers:
                continue
            if fr * xm / (fr + xm) > best[0] * best[1] / (best[0] + best[1]):
                best = (fr, xm)
    return best


class CPURowReduction(_CPURule):
    """Row-wise reduction chains: softmax (max -> exp -> sum -> divide), layer norm (sum -> mean ->
    variance -> normalise), RMSNorm. One parallel loop over the rows with every block computed at
    it (as dlight's CPU Reduction rule does), but each reduction over a static axis that is a
    multiple of the vector width is first split and rfactored: LANES partial sums (or maxima)
    accumulate in vector lanes and a short final reduction adds them, instead of one serial
    chain of dependent scalar adds. (dlight's rule cannot: rfactor needs the reduction to be the
    first block under its loop, so it must come before the compute_at.) Measured on MiniLM's
    layer norm over [8, 128, 384]: 0.79 ms with dlight's rule, 0.11 ms with this one."""

    def schedule(self, func: tirx.PrimFunc, target: Target):
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None or len(infos) < 2 or all(info.is_injective() for info in infos) or not infos[-1].is_injective():
            return None
        kinds = [info.dom_kind() for info in infos]
        if any(not kind or kind[0] != "S" for kind in kinds):
            return None
        leading = min(len(kind) - len(kind.lstrip("S")) for kind in kinds)
        lanes = _lanes(target)
        vectorised = False
        partial_extents = {}  # partial-sum block -> (length of its reduction, lanes), if partial
        for info, kind in zip(infos, kinds):
            if info.is_injective() or not kind.endswith("R"):
                continue
            reduce_loop = sch.get_loops(info.block_rv)[-1]
            extent = sch.get(reduce_loop).extent
            if _static(extent) is not None and _static(extent) <= lanes:
                continue
            # A length the vector width does not divide (symbolic, or a sequence of 100) leaves
            # a partial last vector, guarded lane by lane (see _guard_partial_sums)
            partial = _static(extent) is None or _static(extent) % lanes != 0
            if partial and target.kind.name != "llvm":
                # (which pays through the llvm pipeline's vector_tails; TVM's C code generator
                # also prints a symbolic workspace size with a let it cannot declare)
                continue
            _, lane = sch.split(reduce_loop, [None, lanes])
            name = sch.get(info.block_rv).name_hint
            if _try(sch.rfactor, lane, len(kind) - 1):
                vectorised = True
                if partial:
                    partial_extents[name + "_rf"] = (extent, lanes)
        if not vectorised:
            return None  # nothing to gain over dlight's rule
        for block in sch.get_child_blocks(get_root_block(sch))[:-1]:
            # An elementwise step read by one elementwise consumer goes inline (softmax's x - max
            # into exp). Left apart, the two shared one row buffer and exp's final max(e, x) became
            # a masked store, microcoded on AMD: softmax ran 3x slower than ORT on Zen 3.
            consumers = sch.get_consumers(block)
            if _spatial(sch, block) and len(consumers) == 1 and _spatial(sch, consumers[0]):
                _try(sch.compute_inline, block)
        blocks = sch.get_child_blocks(get_root_block(sch))
        last = blocks[-1]
        loops = sch.get_loops(last)
        rows = sch.fuse(*loops[:leading]) if leading > 1 else loops[0]
        _parallel(sch, rows)
        _vectorise_innermost(sch, last, lanes)
        for block in reversed(blocks[:-1]):
            sch.compute_at(block, rows, preserve_unit_loops=True)
        for block in blocks[:-1]:
            stmt = sch.get(block)
            if stmt.name_hint.endswith("_rf"):
                # the partial results: the K / LANES loop outside, the (data-parallel) lanes inside
                bindings = _iter_bindings(sch, block)
                reduce_vars = [iv.var for iv in stmt.iter_vars if iv.iter_type == tirx.IterVar.CommReduce]
                inner = sch.get_loops(block)[1:]
                serial = [loop for loop in inner if any(_uses_var(bindings[v], sch.get(loop).loop_var) for v in reduce_vars)]
                lane = [loop for loop in inner if loop not in serial and _static(sch.get(loop).extent) == lanes]
                if len(serial) != 1 or len(lane) != 1:
                    return None
                sch.reorder(serial[0], lane[0])
                sch.vectorize(lane[0])
                sch.decompose_reduction(block, serial[0])
                continue
            if all(iv.iter_type == tirx.IterVar.DataPar for iv in stmt.iter_vars):
                _vectorise_innermost(sch, block, lanes)
        if partial_extents:
            sch = s_tir.Schedule(_guard_partial_sums(sch.mod["main"], partial_extents))
        return _serial_when_small(sch)


def _guard_partial_sums(func: tirx.PrimFunc, splits: dict) -> tirx.PrimFunc:
    """Guard the update of each partial-sum block in ``splits`` (``name_rf``: vector lanes over a
    reduction whose length ``lanes`` does not divide, split into steps of ``lanes``) by the
    split's own test, ``step * lanes + lane < length``. The split puts that test on the block,
    and TVM 0.27's rfactor drops it: the lanes of the last vector read past the row."""

    def guard(block):
        name = block.name_hint[:-len("_update")] if block.name_hint.endswith("_update") else block.name_hint
        if name not in splits:
            return block
        length, lanes = splits[name]
        steps = [iv.var for iv in block.iter_vars if iv.iter_type == tirx.IterVar.CommReduce]
        spatial = [iv.var for iv in block.iter_vars if iv.iter_type == tirx.IterVar.DataPar]
        # rfactor's lane: the spatial variable that indexes the input together with the step
        # (the partial sums' axis of it is not always the last: unit dims move it)
        written = block.writes[0].source
        indices = [index.min for r in block.reads if not r.source.same_as(written) for index in r.region]
        read_with_step = [v for v in spatial if len(steps) == 1
                          and any(_uses_var(i, steps[0]) and _uses_var(i, v) for i in indices)]
        if len(steps) != 1 or len(read_with_step) != 1:
            raise ValueError(f"{block.name_hint}: not the partial sums of one split reduction")
        lane = read_with_step[0]
        body = tirx.IfThenElse(steps[0] * lanes + lane < length, block.body, None)
        return s_tir.SBlock(block.iter_vars, block.reads, block.writes, block.name_hint, body, block.init,
                            block.alloc_buffers, block.match_buffers, block.annotations)

    def visit(node, mutator):
        node = mutator.default_mutate(node)
        return guard(node) if isinstance(node, s_tir.SBlock) else node

    return func.with_body(tvm_ffi.structural_mutate(func.body, [(object, visit)]))


def _spatial(sch: s_tir.Schedule, block) -> bool:
    return all(iv.iter_type == tirx.IterVar.DataPar for iv in sch.get(block).iter_vars)


def _vectorise_innermost(sch: s_tir.Schedule, block, lanes: int) -> None:
    loops = sch.get_loops(block)
    if len(loops) <= 1:
        return
    extent = _static(sch.get(loops[-1]).extent)
    if extent is None:
        # The last vector's lanes are guarded: whole vectors where every lane is in range
        # rely on the vector_tails pass (a guard it cannot take makes the loop scalar code).
        _, loop = sch.split(loops[-1], [None, lanes])
        sch.vectorize(loop)
        return
    if extent < 2:
        return
    if extent > lanes and extent % lanes == 0:
        _, loop = sch.split(loops[-1], [None, lanes])
        sch.vectorize(loop)
    elif extent <= lanes:
        sch.vectorize(loops[-1])


class CPUFallback(_CPURule):
    def schedule(self, func: tirx.PrimFunc, target: Target):
        sch = s_tir.Schedule(func)
        _schedule_remaining(sch, target, skip=set())
        return _serial_when_small(sch)


def _scheduled_names(sch: s_tir.Schedule, main) -> set[str]:
    """Blocks already placed by the matmul schedule: those under the main block's outer loop."""
    outer = sch.get_loops(main)[0]
    return {sch.get(b).name_hint for b in sch.get_child_blocks(outer)}


def _schedule_remaining(sch: s_tir.Schedule, target: Target, skip: set) -> None:
    root = get_root_block(sch)
    # Inline spatial blocks into their consumers (or producers) so fewer loop nests remain.
    for block in sch.get_child_blocks(root):
        if sch.get(block).name_hint in skip:
            continue
        if not _try(sch.compute_inline, block):
            _try(sch.reverse_compute_inline, block)
    lanes = _lanes(target)
    for block in sch.get_child_blocks(root):
        if sch.get(block).name_hint in skip:
            continue
        loops = sch.get_loops(block)
        if not loops:
            continue
        if _tile_transpose(sch, block, lanes):
            loops = sch.get_loops(block)
        spatial = _leading_spatial_loops(sch, block, loops)
        if len(spatial) == len(loops) and len(loops) > 1:
            spatial = spatial[:-1]  # keep the innermost loop for vectors
        if spatial:
            fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
            _parallel(sch, fused)
        inner = sch.get_loops(block)[-1]
        extent = _static(sch.get(inner).extent)
        if _innermost_is_spatial(sch, block) and extent and extent % lanes == 0 and extent >= lanes:
            _, vec = sch.split(inner, [None, lanes])
            _try(sch.vectorize, vec)


def _tile_transpose(sch: s_tir.Schedule, block, lanes: int) -> bool:
    """A copy whose output rows are read down a column of its input (a transpose: the innermost
    loop absent from the input's last index, the loop outside it present) runs in square tiles
    of 2 x lanes: row by row, a column of a row-major input spans one line per element, and with
    row strides of a multiple of 1 KiB those lines share a few L1 sets and evict each other (K^T
    in attention, [128, 12, 64] -> [12, 64, 128]: 0.20 ms, ORT 0.085). A tile reads 2 x lanes
    lines, each for 2 x lanes elements (0.09 ms)."""
    stmt = sch.get(block)
    loops = sch.get_loops(block)
    if len(loops) < 2 or len(stmt.reads) != 1 or not stmt.reads[0].region or not _spatial(sch, block):
        return False
    tile = 2 * lanes
    outer, inner = loops[-2:]
    if any(_static(sch.get(loop).extent) is None or _static(sch.get(loop).extent) % tile for loop in (outer, inner)):
        return False
    bindings = _iter_bindings(sch, block)
    indices = [r.min for r in stmt.reads[0].region]

    def in_index(loop, index) -> bool:
        loop_var = sch.get(loop).loop_var
        return any(_uses_var(value, loop_var) and _uses_var(index, var) for var, value in bindings.items())

    # a permutation: every loop indexes the input (a broadcast, in[i] -> out[i, j], is no transpose)
    if not all(any(in_index(loop, index) for index in indices) for loop in loops if _static(sch.get(loop).extent) != 1):
        return False
    if in_index(inner, indices[-1]) or not in_index(outer, indices[-1]):
        return False
    outer_tiles, outer_in = sch.split(outer, [None, tile])
    inner_tiles, inner_in = sch.split(inner, [None, tile])
    sch.reorder(outer_tiles, inner_tiles, outer_in, inner_in)
    return True


def _leading_spatial_loops(sch, block, loops):
    """Outer loops that bind only data-parallel block iters (safe to run in parallel)."""
    stmt = sch.get(block)
    reduce_vars = {iv.var for iv in stmt.iter_vars if iv.iter_type != tirx.IterVar.DataPar}
    bindings = _iter_bindings(sch, block)
    result = []
    for loop in loops:
        loop_var = sch.get(loop).loop_var
        touches_reduce = any(
            _uses_var(value, loop_var) for var, value in bindings.items() if var in reduce_vars
        )
        if touches_reduce:
            break
        result.append(loop)
    return result


def _innermost_is_spatial(sch, block) -> bool:
    stmt = sch.get(block)
    loop_var = sch.get(sch.get_loops(block)[-1]).loop_var
    bindings = _iter_bindings(sch, block)
    reduce_vars = {iv.var for iv in stmt.iter_vars if iv.iter_type != tirx.IterVar.DataPar}
    return not any(_uses_var(value, loop_var) for var, value in bindings.items() if var in reduce_vars)


def _iter_bindings(sch, block) -> dict:
    realize = get_sblockrealize(sch, block)
    return {iv.var: value for iv, value in zip(realize.block.iter_vars, realize.iter_values)}


def _uses_var(expr, var) -> bool:
    return any(v.same_as(var) for v in collect_vars_used_in_prim_expr(expr))
