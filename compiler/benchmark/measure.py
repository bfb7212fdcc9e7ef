"""Timing and memory: interleaved rounds, robust statistics, per-contender peak memory."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def interleaved_times(runs: dict[str, Callable[[], object]], repeat: int, on_round: Callable[[], None] | None = None,
                      before_each: Callable[[], object] | None = None) -> dict[str, list[float]]:
    """Seconds per call of each function, in rounds (A B C, B C A, C A B, ...): interleaving makes
    drift hit all alike, and rotating the order spreads the cost of running right after another
    runtime (cold caches, a thread pool waking up) over all of them. ``before_each`` runs, untimed,
    before every timed call: ``CacheEviction()`` puts every contender in the same cold state, where
    without it one may find the weights another has just read (two that read the same experts)."""
    times: dict[str, list[float]] = {key: [] for key in runs}
    keys = list(runs)
    for round_index in range(repeat):
        shift = round_index % max(len(keys), 1)
        for key in keys[shift:] + keys[:shift]:
            fn = runs[key]
            if before_each:
                before_each()
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
        if on_round:
            on_round()
    return times


class CacheEviction:
    """Reads a buffer twice the size of the largest CPU cache, so that the next call finds its
    weights in memory, not in cache: the state of a layer's weights inside a model, where the
    other layers' weights pass through the caches between two calls of it."""

    def __init__(self, nbytes: int | None = None):
        self.buffer = np.ones((nbytes or 2 * largest_cache_bytes()) // 8, np.float64)

    def __call__(self) -> float:
        return float(self.buffer.sum())


def largest_cache_bytes(default: int = 64 << 20) -> int:
    """The largest CPU cache (Linux sysfs), else ``default``."""
    sizes = []
    for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            match = re.fullmatch(r"(\d+)([KMG]?)", path.read_text().strip())
        except OSError:
            continue
        if match:
            sizes.append(int(match.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[match.group(2)])
    return max(sizes, default=default)


def summarize(seconds: list[float]) -> dict:
    """Milliseconds: median, min, max, quartiles, IQR and mean over the timed runs."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    q1, median, q3 = np.percentile(ms, [25, 50, 75])
    return {"median": float(median), "min": float(ms.min()), "max": float(ms.max()), "q1": float(q1), "q3": float(q3),
            "iqr": float(q3 - q1), "mean": float(ms.mean()), "runs": int(ms.size)}


def _status_bytes(field: str) -> int | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.M)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


class PeakMemory:
    """Peak resident memory a block of work adds to the process (Linux: VmHWM, reset first).

    Writing 5 to /proc/self/clear_refs resets the high-water mark, so each contender's prepare and
    warm-up is measured on its own even though all live in one process. Where that is not
    possible the result is None, never a guess.
    """

    def __enter__(self) -> "PeakMemory":
        self.bytes: int | None = None
        self._base = _status_bytes("VmRSS")
        try:
            _CLEAR_REFS.write_text("5")
            self._reset = True
        except OSError:
            self._reset = False
        return self

    def __exit__(self, *exc) -> None:
        peak = _status_bytes("VmHWM")
        if self._reset and peak is not None and self._base is not None:
            self.bytes = max(0, peak - self._base)
