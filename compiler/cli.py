"""The ``sparsec`` command line: compile, run, inspect, bench, targets, passes.

Errors a user can fix print as one line on stderr with exit status 2; never a traceback.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import SparsecError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="sparsec: compile ONNX models into sparse and conditional code with TVM.")
console = Console()
err_console = Console(stderr=True)
_ARGV: list[str] = []  # the arguments main() was given, recorded in bench results

TargetOpt = typer.Option("llvm", "--target", "-t", help="target name (see `sparsec targets`)")
PassesOpt = typer.Option("default", "--passes", "-p", help="'default', 'none', or comma-separated pass names")
DimOpt = typer.Option(None, "--dim", help="pin a symbolic input dim, NAME=SIZE (repeatable)")
ThreadsOpt = typer.Option(None, "--threads", help="CPU threads (default: all cores)")
ShapeOpt = typer.Option(None, "--shape", help="pin an input's whole shape, NAME=D0,D1,... (repeatable)")
PassOptionOpt = typer.Option(None, "--pass-option", "-O", help="a pass's option, PASS.KEY=VALUE (repeatable), "
                             "e.g. prune.sparsity=0.9 prune.block=16x1")


def _parse_dims(items: list[str] | None) -> dict[str, int] | None:
    dims = {}
    for item in items or []:
        match = re.fullmatch(r"([^=]+)=(\d+)", item.strip())
        if not match:
            raise SparsecError(f"--dim expects NAME=SIZE, got {item!r}")
        dims[match.group(1)] = int(match.group(2))
    return dims or None


def _parse_shapes(items: list[str] | None) -> dict[str, list[int]] | None:
    shapes = {}
    for item in items or []:
        match = re.fullmatch(r"([^=]+)=(\d+(?:,\d+)*)", item.strip())
        if not match:
            raise SparsecError(f"--shape expects NAME=D0,D1,..., got {item!r}")
        shapes[match.group(1)] = [int(d) for d in match.group(2).split(",")]
    return shapes or None


def _parse_pass_options(items: list[str] | None) -> dict[str, dict]:
    options: dict[str, dict] = {}
    for item in items or []:
        match = re.fullmatch(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_]+)=(.*)", item.strip())
        if not match:
            raise SparsecError(f"--pass-option expects PASS.KEY=VALUE, got {item!r}")
        name, key, text = match.groups()
        value: object = text
        for kind in (int, float):
            try:
                value = kind(text)
                break
            except ValueError:
                continue
        options.setdefault(name, {})[key] = value
    return options


def _compile(model: Path, target: str, passes: str, dims, threads, shapes=None, pass_options=None,
             tune: int = 0, tuning_db: Optional[str] = None):
    import sparsec

    doing = f"tuning ({tune} trials) and compiling" if tune else "compiling"
    with err_console.status(f"{doing} {model.name} for {target} ..."):
        return sparsec.compile(str(model), target=target, passes=passes, dims=_parse_dims(dims),
                               shapes=_parse_shapes(shapes), num_threads=threads,
                               pass_options=_parse_pass_options(pass_options), tune=tune, tuning_db=tuning_db)


@app.command("compile")
def compile_cmd(model: Path = typer.Argument(..., help="ONNX model file"),
                output: Path = typer.Option(..., "-o", "--output", help="folder for the compiled model"),
                target: str = TargetOpt, passes: str = PassesOpt, dim: Optional[list[str]] = DimOpt,
                shape: Optional[list[str]] = ShapeOpt, threads: Optional[int] = ThreadsOpt,
                pass_option: Optional[list[str]] = PassOptionOpt,
                tune: int = typer.Option(0, "--tune", help="MetaSchedule trials to tune this model's kernels first "
                                         "(CPU targets; minutes; results kept in the tuning database)"),
                tuning_db: Optional[str] = typer.Option(None, "--tuning-db", help="tuning database folder (default: "
                                                        "$SPARSEC_TUNING_DB or ~/.cache/sparsec/tuning; 'off' ignores it)")):
    """Compile MODEL and write the library and manifest to a folder."""
    compiled = _compile(model, target, passes, dim, threads, shape, pass_option, tune, tuning_db)
    compiled.export(output)
    rewrites = ", ".join(f"{k}={v}" for k, v in compiled.report["rewrites"].items()) or "none"
    console.print(f"compiled {model} for {target} in {compiled.report['compile_seconds']:.1f} s -> {output}")
    console.print(f"passes: {', '.join(compiled.report['passes']) or 'none'}; rewrites: {rewrites}")
    tuning = compiled.report.get("tuning")
    if tuning and "tasks" in tuning:
        console.print(f"tuned {tuning['tasks']} kernel(s) with {tuning['trials']} trials ({tuning['cost_model']} cost model) "
                      f"-> {tuning['database']}")
    elif tuning and tuning.get("applied"):
        console.print(f"applied the tuning database {tuning['database']}")
    elif tuning:
        console.print(f"did not apply the tuning database {tuning['database']}: {tuning['why']}")
    error = compiled.report["details"].get("prune", {}).get("error")
    if error:
        console.print(f"prune changed the outputs: max abs error {error['max_abs']:.3g} "
                      f"(relative {error['relative']:.3g}) on {error['inputs']}")


@app.command("run")
def run_cmd(model: Path = typer.Argument(..., help="compiled folder, or an ONNX file (compiled first)"),
            input: Optional[list[str]] = typer.Option(None, "--input", "-i", help="NAME=FILE.npy (repeatable)"),
            output: Path = typer.Option(..., "-o", "--output", help="folder for <output>.npy files"),
            target: str = TargetOpt, passes: str = PassesOpt, dim: Optional[list[str]] = DimOpt,
            shape: Optional[list[str]] = ShapeOpt, threads: Optional[int] = ThreadsOpt,
            pass_option: Optional[list[str]] = PassOptionOpt):
    """Run a compiled model (or an ONNX file) on inputs given as .npy files."""
    import sparsec

    if model.is_dir():
        compiled = sparsec.load_compiled(model)
    elif model.exists():
        compiled = _compile(model, target, passes, dim, threads, shape, pass_option)
    else:
        raise SparsecError(f"{model} does not exist")
    feeds = {}
    for item in input or []:
        name, sep, path = item.partition("=")
        if not sep:
            raise SparsecError(f"--input expects NAME=FILE.npy, got {item!r}")
        feeds[name] = _load_npy(Path(path), name)
    outputs = compiled.run(feeds)
    output.mkdir(parents=True, exist_ok=True)
    for spec, array in zip(compiled.outputs, outputs):
        path = output / (re.sub(r"[^A-Za-z0-9_.-]", "_", spec.name) + ".npy")
        np.save(path, array)
        console.print(f"{spec.name}: {array.dtype}{list(array.shape)} -> {path}", markup=False)


def _load_npy(path: Path, name: str) -> np.ndarray:
    if not path.is_file():
        raise SparsecError(f"input {name!r}: file {path} not found")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise SparsecError(f"input {name!r}: {path} is not a .npy array ({err})") from None


@app.command("inspect")
def inspect_cmd(model: Path = typer.Argument(..., help="ONNX model file"),
                as_json: bool = typer.Option(False, "--json", help="print JSON instead of tables"),
                dim: Optional[list[str]] = DimOpt):
    """Show a model's ops, parameters, weight sparsity and what the passes could do."""
    import sparsec

    from .inspect import summarize

    with err_console.status(f"loading {model.name} ..."):
        graph = sparsec.load(str(model))
        sparsec.prepare(graph, dims=_parse_dims(dim))
        info = summarize(graph)
    if as_json:
        console.print_json(json.dumps(info))
        return
    console.print(f"[bold]{model}[/bold]: {info['nodes']} nodes, {info['parameters']:,} parameters "
                  f"({info['parameter_bytes'] / 1e6:.1f} MB), opsets {info['opsets']}")
    console.print("inputs:  " + "; ".join(info["inputs"]), markup=False)
    console.print("outputs: " + "; ".join(info["outputs"]), markup=False)
    ops = Table("op", "count", title="ops")
    for op, count in info["ops"].items():
        ops.add_row(op, str(count))
    console.print(ops)
    if info["weights"]:
        weights = Table("weight", "op", "shape", "dtype", "sparsity", "structure", "blocks that hold (out x in)", "N:M",
                        title="weights feeding MatMul/Gemm/Conv")
        for w in info["weights"]:
            weights.add_row(w["name"], w["op"], "x".join(map(str, w["shape"])), w["dtype"], f"{100 * w['sparsity']:.1f}%",
                            w["structure"], ", ".join(w["blocks"]) or "-", ", ".join(w["nm"]) or "-")
        console.print(weights)
    for name, found in info["pass_candidates"].items():
        console.print(f"pass {name}: {len(found)} candidate(s)" + "".join(f"\n  - {c}" for c in found))
    if info["tvm_unsupported"]:
        console.print("[red]TVM cannot lower:[/red] " + "; ".join(f"{u['op']} ({u['domain']}, node {u['node']})" for u in info["tvm_unsupported"]))


@app.command("example")
def example_cmd(target: str = TargetOpt, batch: int = typer.Option(8, help="rows of the example input")):
    """Build a small MLP from sparsec.models, compile it, run it and compare with ONNX Runtime."""
    import tempfile

    import onnx

    import sparsec
    from sparsec.backends import ort
    from sparsec.models import mlp

    folder = Path(tempfile.mkdtemp(prefix="sparsec-example-"))
    path = folder / "mlp.onnx"
    onnx.save(mlp((256, 1024, 256), activation="gelu"), path)
    console.print(f"built {path} (MLP 256 -> 1024 -> 256, GELU) with sparsec.models.mlp")
    compiled = _compile(path, target, "default", None, None)
    x = np.random.default_rng(0).standard_normal((batch, 256)).astype(np.float32)
    ours = compiled.run({"x": x})[0]
    reference = ort.run(str(path), {"x": x})[0]
    error = float(np.max(np.abs(ours - reference)))
    same = bool(np.allclose(ours, reference, rtol=1e-3, atol=1e-4))
    console.print(f"compiled for {target} in {compiled.report['compile_seconds']:.1f} s; ran on x[{batch}, 256] -> y{list(ours.shape)}")
    console.print(f"max |sparsec - onnxruntime| = {error:.3g}: " + ("[green]outputs match[/green]" if same else "[red]MISMATCH[/red]"))
    if not same:
        raise typer.Exit(1)


def _split(values: list[str] | None) -> list[str]:
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


@app.command("bench")
def bench_cmd(models: Optional[list[Path]] = typer.Argument(None, help="ONNX model files (or use --family)"),
              backends: str = typer.Option("ort,tvm,sparsec", "--backends", "-b",
                                           help="comma-separated: ort, ort-cuda, tvm, sparsec, sparsec:PASS+PASS"),
              targets: str = typer.Option("llvm", "--targets", "-t", help="comma-separated targets for tvm/sparsec"),
              passes: str = PassesOpt, threads: Optional[int] = ThreadsOpt,
              batch: Optional[str] = typer.Option(None, "--batch", help="comma-separated sizes for the leading symbolic dim"),
              dim: Optional[list[str]] = DimOpt,
              shape: Optional[list[str]] = ShapeOpt, pass_option: Optional[list[str]] = PassOptionOpt,
              inputs: Optional[Path] = typer.Option(None, "--inputs", help=".npz with one array per model input"),
              repeat: int = typer.Option(20, "--repeat", help="timed runs per backend (interleaved)"),
              warmup: int = typer.Option(3, "--warmup", help="untimed runs per backend first"),
              family: Optional[str] = typer.Option(None, "--family", help="generated model family (see --list-families)"),
              sweep: Optional[list[str]] = typer.Option(None, "--sweep", help="family PARAM=V1,V2,... (repeatable)"),
              list_families: bool = typer.Option(False, "--list-families", help="list model families and exit"),
              json_out: Optional[Path] = typer.Option(None, "--json", help="write the result as JSON"),
              csv_out: Optional[Path] = typer.Option(None, "--csv", help="write one CSV row per case x backend"),
              markdown_out: Optional[Path] = typer.Option(None, "--markdown", help="write a markdown table"),
              plot_out: Optional[Path] = typer.Option(None, "--plot", help="write a PNG chart"),
              rtol: float = typer.Option(1e-3, "--rtol"), atol: float = typer.Option(1e-4, "--atol"),
              seed: int = typer.Option(0, "--seed", help="seed of the generated inputs"),
              cold: bool = typer.Option(False, "--cold", help="evict the CPU caches before every timed call: each backend "
                                        "reads its weights from memory, as one layer of a bigger model does"),
              tuning_db: Optional[str] = typer.Option(None, "--tuning-db", help="tuning database for the sparsec backends "
                                                      "(backend 'untuned' compiles without one)")):
    """Time ONNX Runtime, plain TVM and sparsec side by side on models, checking every output."""
    import shlex

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from .benchmark import bench, families, get_family, sweep_cases
    from .benchmark.families import parse_sweep

    if list_families:
        table = Table("family", "parameters (defaults)", "description")
        for fam in families():
            table.add_row(fam.name, ", ".join(f"{k}={v}" for k, v in fam.params.items()), fam.doc)
        console.print(table)
        return
    cases: list = [str(m) for m in models or []]
    swept = None
    if family:
        fam = get_family(family)
        grid = parse_sweep(fam, sweep or [])
        cases += sweep_cases(family, grid)
        swept = next((k for k, v in grid.items() if len(v) > 1), None)
    elif sweep:
        raise SparsecError("--sweep needs --family")
    if not cases:
        raise SparsecError("give a model file, or --family NAME (see --list-families)")
    sizes = [int(b) for b in _split([batch])] if batch else None
    command = "sparsec " + " ".join(shlex.quote(a) for a in _ARGV)
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=err_console,
                  transient=True) as bar:
        task = bar.add_task("benchmarking", total=None)
        result = bench(cases, backends=_split([backends]), targets=_split([targets]), passes=passes, threads=threads,
                       batch=sizes, dims=_parse_dims(dim), shapes=_parse_shapes(shape), pass_options=_parse_pass_options(pass_option), tuning_db=tuning_db, inputs=inputs, repeat=repeat, warmup=warmup, rtol=rtol,
                       atol=atol, seed=seed, cold=cold, command=command,
                       progress=lambda text, done, total: bar.update(task, description=text, completed=done, total=total))
    # A pipe or file gets the whole table, not one folded to 80 columns.
    (console if console.is_terminal else Console(width=200)).print(result.table())
    for path, write in [(json_out, result.to_json), (csv_out, result.to_csv), (markdown_out, result.to_markdown)]:
        if path:
            write(path)
            console.print(f"wrote {path}")
    if plot_out:
        result.plot(plot_out, sweep=swept)
        console.print(f"wrote {plot_out}")
    if result.mismatches:
        err_console.print(f"[red]{len(result.mismatches)} backend result(s) do not match ONNX Runtime[/red]")
        raise typer.Exit(1)


@app.command("targets")
def targets_cmd():
    """List compilation targets and whether they can run here."""
    from sparsec.backends.tvm.targets import registered_targets

    table = Table("target", "runs here", "description", "options")
    for spec in registered_targets():
        ok, why = spec.can_run()
        table.add_row(spec.name, "yes" if ok else f"no: {why}", spec.description,
                      "; ".join(f"{k}: {v}" for k, v in spec.options.items()))
    console.print(table)


@app.command("passes")
def passes_cmd():
    """List the rewrite passes (exact ones run by default)."""
    from .passmanager import registered_passes

    found = registered_passes()
    if not found:
        console.print("no rewrite passes are registered yet; `--passes default` compiles the model as it is")
        return
    table = Table("pass", "exact", "default", "description")
    for cls in found:
        table.add_row(cls.name, "yes" if cls.exact else "no (reports its error)", "yes" if cls.default else "no", cls.description)
    console.print(table)


def main(argv: list[str] | None = None) -> None:
    global _ARGV
    _ARGV = list(sys.argv[1:] if argv is None else argv)
    try:
        code = app(args=argv, standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except SparsecError as err:
        err_console.print(f"[red]error:[/red] {escape(str(err))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (typer.Exit, SystemExit) as done:
        code = getattr(done, "exit_code", getattr(done, "code", 0))
        sys.exit(code or 0)
    except Exception as err:  # click usage errors and aborts
        import click

        if isinstance(err, click.ClickException):
            err.show()
            sys.exit(err.exit_code)
        if isinstance(err, click.exceptions.Abort):
            sys.exit(130)
        raise


if __name__ == "__main__":
    main()
