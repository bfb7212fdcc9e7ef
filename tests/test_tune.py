"""--tune: MetaSchedule tuning into a database that later compiles apply; never slower than
sparsec's own schedules (they are timed and stored alongside), outputs unchanged."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import sparsec
from conftest import assert_matches_ort
from sparsec import SparsecError
from sparsec.cli import app
from sparsec.models import mlp


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A small MLP tuned with 8 trials into a fresh database."""
    folder = tmp_path_factory.mktemp("db")
    model = mlp((48, 96, 40), activation="gelu", batch=16)
    compiled = sparsec.compile(model, tune=8, tuning_db=str(folder))
    return model, folder, compiled


def test_tuning_records_and_applies_the_database(tuned, rng):
    model, folder, compiled = tuned
    tuning = compiled.report["tuning"]
    assert tuning["database"] == str(folder) and tuning["trials"] == 8 and tuning["tasks"] >= 1
    # sparsec's own schedule of each tuned kernel was timed and stored next to the candidates
    assert tuning["kernels"] and all(k["sparsec_us"] > 0 for k in tuning["kernels"])
    assert any(k["tuned_us"] for k in tuning["kernels"])  # (a small budget may not reach every kernel)
    assert (folder / "database_tuning_record.json").stat().st_size > 0
    x = {"x": rng.standard_normal((16, 48)).astype(np.float32)}
    assert_matches_ort(compiled, model, x)
    # a later compile applies the database without tuning; "off" ignores it
    again = sparsec.compile(model, tuning_db=str(folder))
    assert again.report["tuning"] == {"database": str(folder), "applied": True}
    assert_matches_ort(again, model, x)
    assert sparsec.compile(model, tuning_db="off").report["tuning"] is None


def test_a_database_tuned_against_other_schedules_is_not_applied(tuned, tmp_path):
    """Its records beat sparsec's schedules of that time, maybe not today's."""
    import shutil

    model, folder, _ = tuned
    copy = tmp_path / "old"
    shutil.copytree(folder, copy)
    (copy / "sparsec.json").write_text('{"schedules": "an older build"}')
    report = sparsec.compile(model, tuning_db=str(copy)).report["tuning"]
    assert report["applied"] is False and "tune again" in report["why"]
    retuned = sparsec.compile(model, tune=4, tuning_db=str(copy)).report["tuning"]
    assert retuned["replaced_stale_database"] and retuned["applied"]


def test_applied_schedules_are_the_fastest_recorded(tuned):
    """For every kernel the database holds both sparsec's schedule and the tuned ones: the record
    it applies (top 1) is never slower than sparsec's own."""
    from tvm.s_tir import meta_schedule as ms

    from sparsec.backends.tvm.tuning import open_database

    _, folder, compiled = tuned
    database = open_database(folder)
    records = database.get_all_tuning_records()
    workloads = {r.workload for r in records}
    assert len(records) > len(workloads)  # candidates and sparsec's schedule per workload
    for workload in workloads:
        best = database.get_top_k(workload, 1)[0]
        times = [np.median([float(t) for t in r.run_secs]) for r in records if r.workload.same_as(workload) and r.run_secs]
        assert np.median([float(t) for t in best.run_secs]) <= min(times) + 1e-12
    assert isinstance(database, ms.database.JSONDatabase)


def test_tune_from_the_cli(tmp_path):
    model = tmp_path / "mlp.onnx"
    import onnx

    onnx.save(mlp((32, 64, 32), activation="relu", batch=8), model)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["compile", str(model), "-o", str(out), "--tune", "4",
                                      "--tuning-db", str(tmp_path / "db")])
    assert result.exit_code == 0, result.output
    assert "tuned" in result.output and str(tmp_path / "db") in result.output
    report = json.loads((out / "manifest.json").read_text())["report"]
    assert report["tuning"]["trials"] == 4


def test_tune_refuses_targets_it_cannot_time(tmp_path):
    model = mlp((16, 32, 16), batch=4)
    with pytest.raises(SparsecError, match="CPU targets only"):
        sparsec.compile(model, target="cuda", tune=4, tuning_db=str(tmp_path))
    with pytest.raises(SparsecError, match="positive number of trials"):
        sparsec.compile(model, tune=-1, tuning_db=str(tmp_path))
    with pytest.raises(SparsecError, match="drop --tuning-db off"):
        sparsec.compile(model, tune=4, tuning_db="off")


def test_bench_compares_tuned_and_untuned(tuned):
    model, folder, _ = tuned
    result = sparsec.bench(model, backends=["ort", "untuned", "sparsec"], tuning_db=str(folder), repeat=2, warmup=1,
                           threads=1)
    assert result.to_dict()["settings"]["tuning_db"] == str(folder)
    assert not result.mismatches
    assert {r.backend for r in result.cases[0].results} == {"ort", "untuned@llvm", "sparsec@llvm"}
