"""The cost model of ``sparse-weights``: measured on this host, cached, never guessed.

For a layer shape (rows M, inputs K, outputs N), sparse format (BSR block shape, CSR, N:M),
density and thread count, it times the dense TVM MatMul and the sparse kernel on a weight of that
format with that many blocks kept at random positions (an N:M weight is always N of M), side
by side (fastest run of three interleaved rounds). Densities are calibrated at a few buckets (the smallest at or above the layer's); the sparse time is scaled from the bucket to
the layer's density, and the rewrite is taken only when ``dense / sparse`` is above
``1 + margin``. (Timing the kernel with every block present and scaling that down was wrong for
CSR: a full row is read in order, a half-empty one is a random gather, and on a Zen 3 host it
predicted 1.14x at 50% for a kernel that ran 2x slower than dense.) Results are cached in
``$SPARSEC_CACHE_DIR`` (default ``~/.cache/sparsec``), keyed by CPU model, vector width,
threads, the kernels' source, shape, block and density bucket.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from sparsec.benchmark.measure import interleaved_times
from sparsec.ir.graph import Graph
from sparsec.ir.types import TensorType

from .sparse_formats import SparseFormat

ROW_BUCKETS = (1, 8, 32, 128, 512)
DENSITY_BUCKETS = (0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 1.0)


def cache_dir() -> Path:
    return Path(os.environ.get("SPARSEC_CACHE_DIR") or Path.home() / ".cache" / "sparsec")


def row_bucket(rows: int | None) -> int:
    """Calibrate at a few row counts only: the smallest bucket at or above ``rows`` (32 if unknown)."""
    if rows is None:
        return 32
    return next((b for b in ROW_BUCKETS if rows <= b), ROW_BUCKETS[-1])


def kernels_fingerprint() -> str:
    """The source of the kernels a measurement timed (dense schedules, sparse kernels) and TVM's
    version: a measurement of older kernels is not reused (a faster dense GEMM moves the break-even)."""
    import hashlib

    from sparsec.backends.tvm.kernels import nm_sparse, sparse
    from sparsec.backends.tvm.tuning import schedules_fingerprint

    from . import sparse_formats  # (what each format times: its calibration graphs)

    digest = hashlib.sha256(schedules_fingerprint().encode())
    for source in (sparse, nm_sparse, sparse_formats):
        digest.update(Path(source.__file__).read_bytes())
    return digest.hexdigest()[:12]


def density_bucket(density: float) -> float:
    """Calibrate at a few densities only: the smallest bucket at or above ``density``."""
    return next((b for b in DENSITY_BUCKETS if density <= b), 1.0)


class SparseCostModel:
    def __init__(self, threads: int | None):
        from sparsec.backends.tvm.targets import host_cpu_model, host_vector_lanes

        self.threads = threads or os.cpu_count() or 1
        self.host = f"{host_cpu_model()}|lanes{host_vector_lanes()}|t{self.threads}|{kernels_fingerprint()}"
        self.path = cache_dir() / "sparse_cost.json"
        try:
            self.cache = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.cache = {}

    def times(self, rows: int, k: int, n: int, fmt: SparseFormat, density: float) -> tuple[float, float]:
        """(dense ms, sparse ms) at ``rows`` rows and the density bucket ``density``, measured once per host."""
        key = f"{self.host}|m{rows}|k{k}|n{n}|b{fmt.label}|d{density}"
        if key not in self.cache:
            self.cache[key] = _measure(rows, k, n, fmt, density, self.threads)
            self._save()
        entry = self.cache[key]
        return entry["dense_ms"], entry["sparse_ms"]

    def predicted_speedup(self, rows: int, k: int, n: int, fmt: SparseFormat, density: float) -> float:
        """Dense time over sparse time for a weight whose kernel does ``density`` of the dense work."""
        bucket = density_bucket(density)
        dense, sparse = self.times(rows, k, n, fmt, bucket)
        return dense / max(sparse * density / bucket, 1e-9)

    def _save(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.cache, indent=1, sort_keys=True))
            tmp.replace(self.path)
        except OSError:
            pass  # a read-only home still compiles; it just measures again next time


def _measure(rows: int, k: int, n: int, fmt: SparseFormat, density: float, threads: int) -> dict:
    from sparsec.driver import compile as sparsec_compile

    rng = np.random.default_rng(0)
    weight = fmt.random_weight(rng, n, k, density)  # [out, in]
    dense, sparse = fmt.calibration_graphs(rows, weight)
    for g in (dense, sparse):
        g.opset_imports.update({"": 17, "sparsec": 1})
    runs = {name: sparsec_compile(g, passes=[], num_threads=threads) for name, g in (("dense", dense), ("sparse", sparse))}
    feeds = {"x": rng.standard_normal(dense.inputs[0].type.shape).astype(np.float32)}
    budget = time.perf_counter()
    for compiled in runs.values():  # warm up
        compiled.run(feeds)
    single = (time.perf_counter() - budget) / 2
    repeat = int(min(50, max(5, 0.3 / max(single, 1e-6))))
    # The fastest of interleaved runs, best of three rounds: a calibration taken while another
    # process had the cores would otherwise be cached as the truth (a 10x-slow dense time was).
    best = {name: float("inf") for name in runs}
    for _ in range(3):
        times = interleaved_times({name: (lambda c=c: c.run(feeds)) for name, c in runs.items()}, repeat)
        best = {name: min(best[name], float(np.min(times[name]))) for name in runs}
    return {"dense_ms": best["dense"] * 1e3, "sparse_ms": best["sparse"] * 1e3, "repeat": repeat, "rounds": 3}
