"""PNG charts of a BenchResult (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

from ..errors import SparsecError


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise SparsecError("plots need matplotlib: pip install 'sparsec[bench]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_chart(result, path: Path) -> None:
    """Grouped bars: one group per case, one bar per backend, median with the IQR as error bar."""
    plt = _pyplot()
    backends = list(dict.fromkeys(r.backend for c in result.cases for r in c.results if r.times_ms))
    if not backends:
        raise SparsecError("nothing to plot: no backend produced timings")
    width = 0.8 / len(backends)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(result.cases) * max(1, len(backends) / 2)), 4.5))
    for i, backend in enumerate(backends):
        xs, medians, low, high = [], [], [], []
        for j, case in enumerate(result.cases):
            r = next((r for r in case.results if r.backend == backend and r.times_ms), None)
            if r is None:
                continue
            t = r.times_ms
            xs.append(j + (i - (len(backends) - 1) / 2) * width)
            medians.append(t["median"])
            low.append(t["median"] - t["q1"])
            high.append(t["q3"] - t["median"])
        bars = ax.bar(xs, medians, width, yerr=[low, high], capsize=3, label=backend)
        ax.bar_label(bars, labels=[f"{m:.3g}" for m in medians], fontsize=7, padding=2)
    every = [r.times_ms["median"] for c in result.cases for r in c.results if r.times_ms]
    if max(every) / max(min(every), 1e-9) > 50:  # cases far apart in size: keep the small ones visible
        ax.set_yscale("log")
    ax.set_xticks(range(len(result.cases)), [c.name for c in result.cases], rotation=15, ha="right", fontsize=8)
    ax.set_ylabel("median time per call (ms), IQR error bars")
    ax.set_title(f"sparsec bench: {result.settings['threads']} threads, {result.settings['repeat']} runs")
    _flag_mismatches(ax, result)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sweep_chart(result, param: str, path: Path) -> None:
    """Lines: speed-up vs ORT (median time when ORT is absent) against a swept parameter."""
    plt = _pyplot()
    have_ort = any(r.speedup_vs_ort for c in result.cases for r in c.results)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    backends = list(dict.fromkeys(r.backend for c in result.cases for r in c.results if r.times_ms))
    groups = {}  # the other parameters' values -> cases, so each line varies only `param`
    for case in result.cases:
        if param not in case.params:
            raise SparsecError(f"case {case.name!r} has no parameter {param!r} to plot against")
        rest = tuple((k, v) for k, v in sorted(case.params.items()) if k != param)
        groups.setdefault(rest, []).append(case)
    for backend in backends:
        if have_ort and backend == "ort":
            continue
        for rest, cases in groups.items():
            points = sorted((c.params[param], r) for c in cases for r in c.results if r.backend == backend and r.times_ms)
            if not points:
                continue
            ys = [r.speedup_vs_ort if have_ort else r.times_ms["median"] for _, r in points]
            label = backend + ("" if not rest else " (" + ", ".join(f"{k}={v}" for k, v in rest) + ")")
            ax.plot([x for x, _ in points], ys, marker="o", label=label)
    if have_ort:
        ax.axhline(1.0, color="gray", linestyle="--", linewidth=1, label="ORT")
    ax.set_xlabel(param)
    ax.set_ylabel("speed-up vs ORT (x)" if have_ort else "median time per call (ms)")
    ax.set_title(f"sparsec bench sweep over {param}: {result.settings['threads']} threads")
    _flag_mismatches(ax, result)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _flag_mismatches(ax, result) -> None:
    if result.mismatches:
        text = "OUTPUT MISMATCH: " + "; ".join(f"{case} / {backend}" for case, backend, _ in result.mismatches[:4])
        ax.text(0.01, 0.99, text, transform=ax.transAxes, va="top", color="red", fontsize=8)
