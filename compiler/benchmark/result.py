"""BenchResult and its outputs: JSON (schema ``sparsec-bench/1``), CSV, markdown, rich table, PNG."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

SCHEMA = "sparsec-bench/1"
SCHEMA_FILE = Path(__file__).with_name("schema.json")


@dataclass
class BackendResult:
    backend: str  # label: kind, or kind@target
    kind: str
    target: str | None
    passes: str
    status: str = "ok"  # ok | skipped | error
    reason: str = ""  # why skipped or failed
    compile_seconds: float | None = None
    weight_bytes: int | None = None
    peak_memory_bytes: int | None = None  # peak RSS added by preparing and warming up this backend
    rewrites: dict = field(default_factory=dict)
    times_ms: dict | None = None  # median, min, max, q1, q3, iqr, mean, runs
    speedup_vs_ort: float | None = None  # ORT's median / this median
    correct: bool | None = None  # outputs match ORT on the original model (None: not compared)
    max_abs_err: float | None = None
    max_rel_err: float | None = None
    mismatch: str = ""  # what differed, when not correct


@dataclass
class CaseResult:
    name: str
    model: str
    sha256: str
    batch: int | None
    dims: dict
    params: dict
    inputs: list
    results: list[BackendResult] = field(default_factory=list)


@dataclass
class BenchResult:
    machine: dict
    versions: dict
    settings: dict
    cases: list[CaseResult]
    command: str
    created: str

    # --- views -----------------------------------------------------------------------------------
    def rows(self) -> list[dict]:
        """One flat row per case x backend (what the CSV and markdown hold)."""
        rows = []
        for case in self.cases:
            for r in case.results:
                t = r.times_ms or {}
                rows.append({
                    "case": case.name, "backend": r.backend, "status": r.status,
                    "median_ms": t.get("median"), "q1_ms": t.get("q1"), "q3_ms": t.get("q3"),
                    "min_ms": t.get("min"), "max_ms": t.get("max"), "iqr_ms": t.get("iqr"), "runs": t.get("runs"),
                    "speedup_vs_ort": r.speedup_vs_ort, "correct": r.correct, "max_abs_err": r.max_abs_err,
                    "max_rel_err": r.max_rel_err, "compile_s": r.compile_seconds, "weight_bytes": r.weight_bytes,
                    "peak_memory_bytes": r.peak_memory_bytes,
                    "rewrites": ";".join(f"{k}={v}" for k, v in sorted(r.rewrites.items())),
                    "note": r.reason or r.mismatch, **{f"param_{k}": v for k, v in case.params.items()},
                })
        return rows

    @property
    def mismatches(self) -> list[tuple[str, str, str]]:
        return [(c.name, r.backend, r.mismatch) for c in self.cases for r in c.results if r.correct is False]

    # --- outputs ---------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "created": self.created, "command": self.command, "machine": self.machine,
                "versions": self.versions, "settings": self.settings,
                "cases": [_finite(asdict(case)) for case in self.cases]}

    def to_json(self, path: "str | Path | None" = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            _writable(path).write_text(text + "\n")
        return text

    def to_csv(self, path: "str | Path | None" = None) -> str:
        rows = self.rows()
        columns = list(dict.fromkeys(k for row in rows for k in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        if path is not None:
            _writable(path).write_text(buffer.getvalue())
        return buffer.getvalue()

    def to_markdown(self, path: "str | Path | None" = None) -> str:
        lines = [f"`{self.command}`", "",
                 f"{self.machine.get('cpu') or self.machine.get('machine')}, {self.settings['threads']} threads; "
                 f"median of {self.settings['repeat']} interleaved runs after {self.settings['warmup']} warm-up"
                 f"{', each after a cache eviction' if self.settings.get('cold') else ''}; "
                 f"sparsec {self.versions.get('sparsec')}, TVM {self.versions.get('tvm')}, ORT {self.versions.get('onnxruntime')}; "
                 f"{self.created}", "",
                 "| case | backend | median ms | IQR ms | vs ORT | matches ORT | compile s | weights MB | peak MB | rewrites |",
                 "|---|---|---:|---:|---:|---|---:|---:|---:|---|"]
        for row in self.rows():
            if row["status"] != "ok":
                lines.append(f"| {row['case']} | {row['backend']} | {row['status']} | | | | | | | {_md(row['note'])} |")
                continue
            correct = {True: "yes", False: f"**NO** ({_md(row['note'])})", None: "n/a"}[row["correct"]]
            lines.append(
                f"| {row['case']} | {row['backend']} | {_num(row['median_ms'])} | {_num(row['iqr_ms'])} | "
                f"{_num(row['speedup_vs_ort'], 'x')} | {correct} | {_num(row['compile_s'], digits=1)} | "
                f"{_mb(row['weight_bytes'])} | {_mb(row['peak_memory_bytes'])} | {row['rewrites'] or '-'} |")
        text = "\n".join(lines) + "\n"
        if path is not None:
            _writable(path).write_text(text)
        return text

    def table(self):
        """A rich Table for the terminal."""
        from rich.table import Table

        table = Table(title=f"sparsec bench ({self.settings['threads']} threads, median of {self.settings['repeat']})")
        for column, justify in [("case", "left"), ("backend", "left"), ("median ms", "right"), ("IQR ms", "right"),
                                ("vs ORT", "right"), ("matches ORT", "left"), ("compile s", "right"),
                                ("weights MB", "right"), ("peak MB", "right"), ("rewrites", "left")]:
            table.add_column(column, justify=justify, no_wrap=column in ("backend", "median ms", "vs ORT"))
        for row in self.rows():
            if row["status"] != "ok":
                table.add_row(row["case"], row["backend"], f"[yellow]{row['status']}[/]", "", "", "", "", "", "",
                              _escape(row["note"]))
                continue
            correct = {True: "[green]yes[/]", False: f"[bold red]NO[/] {_escape(row['note'])}", None: "n/a"}[row["correct"]]
            table.add_row(row["case"], row["backend"], _num(row["median_ms"]), _num(row["iqr_ms"]),
                          _num(row["speedup_vs_ort"], "x"), correct, _num(row["compile_s"], digits=1),
                          _mb(row["weight_bytes"]), _mb(row["peak_memory_bytes"]), row["rewrites"] or "-")
        return table

    def plot(self, path: "str | Path", sweep: str | None = None) -> Path:
        """A PNG: median time per backend with IQR error bars, grouped by case; or, for a sweep
        over parameter ``sweep``, speed-up vs ORT (or median time without ORT) against it."""
        from .plot import bar_chart, sweep_chart

        path = _writable(path)
        if sweep:
            sweep_chart(self, sweep, path)
        else:
            bar_chart(self, path)
        return path


def _finite(value):
    """JSON has no inf/nan: they become null (with the mismatch text saying why)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _num(value, suffix: str = "", digits: int | None = None) -> str:
    if value is None:
        return "-"
    if digits is None:
        digits = 3 if abs(value) < 1 else 2
    return f"{value:.{digits}f}{suffix}"


def _mb(value) -> str:
    return "-" if value is None else f"{value / 1e6:.1f}"


def _md(text: str) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text or "")


def _writable(path: "str | Path") -> Path:
    """The path, its folder created (``--json out/bench/x.json`` into a fresh checkout)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
