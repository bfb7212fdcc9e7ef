"""The ONNX backend node suite, regenerated from the case definitions the onnx wheel ships.

    python tests/onnx_node_cases.py --update       # rewrites tests/data/node_roundtrip_pass.txt
    python tests/onnx_node_cases.py --update-tvm   # rewrites tests/data/node_tvm_pass.txt

Round trip: sparsec.load -> sparsec.to_onnx -> ONNX Runtime, compared with the case's expected
outputs. The checked-in list holds the cases that pass; tests fail if one of them stops passing.
"""

from __future__ import annotations

import functools
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort

DATA = Path(__file__).parent / "data"
ROUNDTRIP_LIST = DATA / "node_roundtrip_pass.txt"
SUMMARY = DATA / "node_suite_summary.json"


@functools.cache
def cases() -> dict:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {c.name: c for c in collect_testcases()}


def _session(model):
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _same(got, want, rtol, atol) -> bool:
    if isinstance(want, list | tuple):
        return isinstance(got, list | tuple) and len(got) == len(want) and all(_same(g, w, rtol, atol) for g, w in zip(got, want))
    if want is None:
        return got is None
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return False
    if want.dtype.kind in "fc":
        return bool(np.allclose(got, want, rtol=rtol, atol=atol, equal_nan=True))
    return bool(np.array_equal(got, want))


def run_on_ort(case, model) -> tuple[bool, str]:
    try:
        session = _session(model)
        names = [i.name for i in session.get_inputs()]
        for inputs, outputs in case.data_sets:
            got = session.run(None, dict(zip(names, inputs)))
            if not _same(list(got), list(outputs), max(case.rtol, 1e-3), max(case.atol, 1e-4)):
                return False, "outputs differ"
        return True, ""
    except Exception as err:  # any failure fails the case
        return False, f"{type(err).__name__}: {str(err).strip().splitlines()[0][:160] if str(err).strip() else ''}"


def roundtrip(case) -> tuple[bool, str]:
    import sparsec

    try:
        exported = sparsec.to_onnx(sparsec.load(case.model))
    except Exception as err:
        return False, f"sparsec: {type(err).__name__}: {str(err).strip()[:160]}"
    return run_on_ort(case, exported)


def update() -> None:
    DATA.mkdir(exist_ok=True)
    passed, ort_passed, reasons = [], 0, {}
    for name, case in sorted(cases().items()):
        ok_original, _ = run_on_ort(case, case.model)
        ort_passed += ok_original
        ok, why = roundtrip(case)
        if ok:
            passed.append(name)
        elif ok_original:
            reasons[name] = why
    ROUNDTRIP_LIST.write_text("\n".join(passed) + "\n")
    summary = json.loads(SUMMARY.read_text()) if SUMMARY.exists() else {}
    summary.update({"total": len(cases()), "ort_original_pass": ort_passed, "roundtrip_pass": len(passed),
                    "roundtrip_fail_where_ort_passes": reasons})
    SUMMARY.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    print(f"{len(cases())} cases; ORT on the originals passes {ort_passed}; sparsec round trip passes {len(passed)}")


if __name__ == "__main__" and "--update" in sys.argv:
    update()


TVM_LIST = DATA / "node_tvm_pass.txt"


def through_tvm(case) -> tuple[bool, str]:
    """import -> IR -> TVM (llvm, no passes) -> run, compared with the case's expected outputs."""
    import sparsec

    try:
        compiled = sparsec.compile(case.model, passes=[])
        for inputs, outputs in case.data_sets:
            got = compiled.run(dict(zip([s.name for s in compiled.inputs], inputs)))
            if not _same(got, list(outputs), max(case.rtol, 1e-3), max(case.atol, 1e-4)):
                return False, "outputs differ"
        return True, ""
    except Exception as err:  # any failure fails the case
        return False, f"{type(err).__name__}: {str(err).strip()[:160]}"


def update_tvm() -> None:
    passed = [name for name, case in sorted(cases().items()) if through_tvm(case)[0]]
    TVM_LIST.write_text("\n".join(passed) + "\n")
    summary = json.loads(SUMMARY.read_text())
    summary["tvm_pass"] = len(passed)
    SUMMARY.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    print(f"sparsec -> TVM passes {len(passed)} of {len(cases())}")


if __name__ == "__main__" and "--update-tvm" in sys.argv:
    update_tvm()
