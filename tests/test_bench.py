"""`sparsec bench` and `sparsec.bench`: timings, correctness flags, outputs, schema, plug-ins."""

import csv
import io
import json

import jsonschema
import numpy as np
import onnx
import pytest

import sparsec
from sparsec.benchmark import SCHEMA_FILE, Skipped, register_contender
from sparsec.benchmark.contenders import Contender, SparsecContender
from sparsec.cli import main
from sparsec.models import mlp

SCHEMA = json.loads(SCHEMA_FILE.read_text())


@pytest.fixture(scope="module")
def mlp_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "mlp.onnx"
    onnx.save(mlp((48, 100, 40), activation="gelu"), path)  # symbolic "batch" rows
    return path


class NoisyContender(SparsecContender):
    """sparsec's build with its first output perturbed: the table must flag it, never hide it."""

    def prepare(self, model, settings):
        prepared = super().prepare(model, settings)
        run = prepared.run
        prepared.run = lambda feeds: [run(feeds)[0] + 0.5] + run(feeds)[1:]
        return prepared


class FailingContender(Contender):
    def __init__(self, kind):
        self.kind = kind

    def prepare(self, model, settings):
        raise RuntimeError("device exploded\ndetails on a second line")


class AbsentContender(Contender):
    def __init__(self, kind):
        self.kind = kind

    def prepare(self, model, settings):
        raise Skipped("no such accelerator here")


register_contender("test-noisy", lambda kind, target, passes: NoisyContender(kind, target, passes), per_target=True)
register_contender("test-failing", lambda kind, target, passes: FailingContender(kind), per_target=False)
register_contender("test-absent", lambda kind, target, passes: AbsentContender(kind), per_target=False)


def test_bench_api_times_checks_and_reports(mlp_file, tmp_path):
    result = sparsec.bench(str(mlp_file), backends=["ort", "tvm", "sparsec", "ort-cuda"], batch=[1, 5],
                           repeat=4, warmup=1, threads=1)
    assert [c.name for c in result.cases] == ["mlp.onnx batch 1", "mlp.onnx batch 5"]
    for case in result.cases:
        assert case.inputs == [{"name": "x", "dtype": "float32", "shape": [case.batch, 48]}]
        by = {r.backend: r for r in case.results}
        assert list(by) == ["ort", "tvm@llvm", "sparsec@llvm", "ort-cuda"]
        assert by["ort-cuda"].status == "skipped" and "CUDAExecutionProvider" in by["ort-cuda"].reason
        for name in ("ort", "tvm@llvm", "sparsec@llvm"):
            r = by[name]
            assert r.status == "ok" and r.correct is True, r
            assert r.times_ms["runs"] == 4 and r.times_ms["min"] <= r.times_ms["median"] <= r.times_ms["max"]
            assert r.times_ms["q1"] <= r.times_ms["median"] <= r.times_ms["q3"]
            assert r.weight_bytes == (48 * 100 + 100 + 100 * 40 + 40) * 4
            assert r.max_abs_err < 1e-4
        assert by["ort"].speedup_vs_ort == 1.0
        assert by["sparsec@llvm"].speedup_vs_ort == pytest.approx(by["ort"].times_ms["median"] / by["sparsec@llvm"].times_ms["median"])
        assert by["tvm@llvm"].passes == "none" and by["tvm@llvm"].compile_seconds > 0
    document = json.loads(result.to_json(tmp_path / "r.json"))
    jsonschema.validate(document, SCHEMA)
    assert document["settings"]["threads"] == 1 and document["machine"]["cores"] >= 1
    rows = list(csv.DictReader(io.StringIO(result.to_csv())))
    assert len(rows) == 8 and {r["status"] for r in rows} == {"ok", "skipped"}
    markdown = result.to_markdown()
    assert markdown.count("\n| mlp.onnx batch") == 8 and "skipped" in markdown and "**NO**" not in markdown


def test_mismatch_failure_and_skip_are_reported_not_hidden(mlp_file, tmp_path):
    result = sparsec.bench(str(mlp_file), backends=["ort", "test-noisy", "test-failing", "test-absent"], batch=2,
                           repeat=2, warmup=1, threads=1)
    by = {r.backend: r for r in result.cases[0].results}
    noisy = by["test-noisy@llvm"]
    assert noisy.status == "ok" and noisy.correct is False and noisy.max_abs_err == pytest.approx(0.5, rel=1e-3)
    assert "output 0" in noisy.mismatch and result.mismatches == [("mlp.onnx batch 2", "test-noisy@llvm", noisy.mismatch)]
    assert by["test-failing"].status == "error" and by["test-failing"].reason == "RuntimeError: details on a second line"
    assert by["test-absent"].status == "skipped" and by["test-absent"].reason == "no such accelerator here"
    assert "**NO**" in result.to_markdown()
    jsonschema.validate(json.loads(result.to_json()), SCHEMA)
    png = result.plot(tmp_path / "flagged.png")
    assert png.stat().st_size > 10_000


def test_cli_writes_every_output(mlp_file, tmp_path, capsys):
    out = {ext: tmp_path / "new" / ext / f"r.{ext}" for ext in ("json", "csv", "md", "png")}  # folders made as needed
    with pytest.raises(SystemExit) as done:
        main(["bench", str(mlp_file), "--batch", "1,3", "--backends", "ort,sparsec", "--repeat", "3", "--warmup", "1",
              "--threads", "1", "--json", str(out["json"]), "--csv", str(out["csv"]), "--markdown", str(out["md"]),
              "--plot", str(out["png"]), "--cold"])
    assert done.value.code == 0
    printed = capsys.readouterr().out
    assert "sparsec@llvm" in printed and "mlp.onnx batch 3" in printed
    document = json.loads(out["json"].read_text())
    jsonschema.validate(document, SCHEMA)
    assert document["command"].startswith("sparsec bench ") and "--batch 1,3" in document["command"]
    assert len(document["cases"]) == 2 and all(r["correct"] for c in document["cases"] for r in c["results"])
    assert len(list(csv.DictReader(out["csv"].open()))) == 4
    assert out["md"].read_text().startswith("`sparsec bench ") and "each after a cache eviction" in out["md"].read_text()
    assert document["settings"]["cold"] is True
    image = __import__("matplotlib.image", fromlist=["imread"]).imread(out["png"])
    assert image.shape[0] > 300 and image.shape[1] > 500 and np.ptp(image) > 0


def test_cli_family_sweep_plots_a_line(tmp_path, capsys):
    plot = tmp_path / "sweep.png"
    with pytest.raises(SystemExit) as done:
        main(["bench", "--family", "mlp", "--sweep", "hidden=32,64", "--sweep", "ffn=64", "--sweep", "batch=2",
              "--backends", "ort,sparsec", "--repeat", "2", "--warmup", "1", "--threads", "1",
              "--json", str(tmp_path / "s.json"), "--plot", str(plot)])
    assert done.value.code == 0
    document = json.loads((tmp_path / "s.json").read_text())
    assert [c["params"] for c in document["cases"]] == [{"hidden": 32, "ffn": 64, "batch": 2}, {"hidden": 64, "ffn": 64, "batch": 2}]
    assert plot.stat().st_size > 10_000


@pytest.mark.parametrize("argv, message", [
    (["bench", "--family", "mlp", "--backends", "ort,cuda-magic"], "unknown bench backend 'cuda-magic'"),
    (["bench", "--family", "mlp", "--backends", "sparsec:no-such-pass"], "unknown pass 'no-such-pass'"),
    (["bench", "--family", "mlp", "--sweep", "depth=3"], "has no parameter 'depth'"),
    (["bench", "--family", "mlp", "--sweep", "hidden=big"], "values must be int"),
    (["bench", "--sweep", "hidden=3"], "--sweep needs --family"),
    (["bench"], "give a model file"),
    (["bench", "missing.onnx"], "no model file at missing.onnx"),
])
def test_cli_bad_arguments_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_batch_on_a_static_model_is_refused(tmp_path):
    path = tmp_path / "static.onnx"
    onnx.save(mlp((8, 8), batch=4), path)
    with pytest.raises(sparsec.SparsecError, match="first dim is symbolic"):
        sparsec.bench(str(path), backends=["ort"], batch=2, repeat=1)


def test_inputs_from_npz_are_used(mlp_file, tmp_path):
    x = np.full((2, 48), 0.25, np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    result = sparsec.bench(str(mlp_file), backends=["ort"], inputs=tmp_path / "in.npz", dims={"batch": 2}, repeat=1)
    assert result.cases[0].inputs == [{"name": "x", "dtype": "float32", "shape": [2, 48]}]
    np.savez(tmp_path / "wrong.npz", y=x)
    with pytest.raises(sparsec.SparsecError, match="lacks input"):
        sparsec.bench(str(mlp_file), backends=["ort"], inputs=tmp_path / "wrong.npz", repeat=1)


def test_cold_rounds_evict_before_every_timed_call_untimed(monkeypatch):
    from sparsec.benchmark import measure

    events = []
    runs = {name: (lambda name=name: events.append(name)) for name in "ab"}
    clock = iter(range(100))
    monkeypatch.setattr(measure.time, "perf_counter", lambda: next(clock))
    times = measure.interleaved_times(runs, 2, before_each=lambda: events.append("evict"))
    assert events == ["evict", "a", "evict", "b", "evict", "b", "evict", "a"]
    assert times == {"a": [1, 1], "b": [1, 1]}  # the eviction is outside the timed span
    assert measure.CacheEviction(1 << 20).buffer.nbytes == 1 << 20
    assert measure.largest_cache_bytes() >= 1 << 20


def test_memory_floor_reads_every_byte_it_was_asked_for():
    from sparsec.benchmark.memory_floor import StreamRead

    read = StreamRead(1_000_000, threads=2)
    read.data.copyfrom(np.arange(read.nbytes // 4, dtype=np.float32).reshape(read.data.shape) % 7)
    read()
    assert 1_000_000 - 2 * 16 * 4 < read.nbytes <= 1_000_000
    assert read.total() == float((np.arange(read.nbytes // 4) % 7).sum())  # every element, each once


def test_bench_cold_evicts_before_every_timed_call(mlp_file, monkeypatch):
    from sparsec.benchmark import run

    evictions = []

    class CountedEviction:
        def __call__(self):
            evictions.append(1)

    monkeypatch.setattr(run, "CacheEviction", CountedEviction)
    result = sparsec.bench(str(mlp_file), backends=["ort", "sparsec"], batch=2, repeat=3, warmup=1, threads=1, cold=True)
    assert len(evictions) == 2 * 3 and result.settings["cold"] is True
    assert all(r.correct and r.times_ms["runs"] == 3 for r in result.cases[0].results)
    assert not sparsec.bench(str(mlp_file), backends=["ort"], batch=2, repeat=2, warmup=1, threads=1).settings["cold"]
    assert len(evictions) == 6
