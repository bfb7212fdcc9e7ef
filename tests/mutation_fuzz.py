"""Mutation fuzzing of sparsec on the ONNX node suite: broken models in, clear errors out.

Each trial takes a case that compiles (``tests/data/node_suite_tvm_pass.txt``), breaks its model
one or two ways (renamed, duplicated or cyclic values, dropped or retyped attributes, odd dims
and element types, unknown ops, domains and opsets, flipped or truncated bytes) and compiles and
runs it through ``sparsec.compile`` in a worker process, then sorts the outcome:

* ``ok``: it compiled and ran, and matched ONNX Runtime on the same model where ORT runs it;
* ``clean``: a ``SparsecError`` (the one-line errors the CLI prints);
* ``bad``: any other exception (a traceback for the user), ``crash`` or ``hang`` of the worker;
* ``mismatch``: it ran, ORT ran, and the outputs differ (a silent wrong answer).

``--feeds`` fuzzes run-time inputs instead: a sample of cases compiled once, then called with
mutated feeds (other dtypes and ranks, empty and strided arrays, NaN, lists, None, strings).

    python -m tests.mutation_fuzz --minutes 30                 # model mutations, out/fuzz.jsonl
    python -m tests.mutation_fuzz --feeds --cases 25
    python -m tests.mutation_fuzz --replay CASE SEED --save m.onnx   # rebuild one trial's model

Anything but ``ok`` and ``clean`` is a bug to fix (or, for ``mismatch``, a documented difference).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from tests.node_suite import RESULTS_DIR, TVM_LIST, cases_by_name, read_list, run_tasks

OP_TYPES = ["Add", "MatMul", "Relu", "Reshape", "Transpose", "Gather", "Concat", "Slice", "Conv", "Softmax", "TopK",
            "Einsum", "Split", "Squeeze", "Unsqueeze", "Expand", "Where", "Cast", "NonZero", "ScatterND", "Foo", ""]
ELEM_TYPES = [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 16, 17, 21, 99]
TRIAL_TIMEOUT = 60.0
OUTCOME_OF_FAILED_TASK = {"crash": "crash", "timeout": "hang", "harness": "harness"}


# --- model mutations: each changes a copy in place (or returns bytes) -------------------------
def _rename_input(m, r):
    nodes = [n for n in m.graph.node if n.input]
    if nodes:
        n = r.choice(nodes)
        n.input[r.randrange(len(n.input))] = r.choice(["missing_value", "", m.graph.output[0].name if m.graph.output else "x"])


def _duplicate_output(m, r):
    names = [i.name for i in m.graph.input] + [o for n in m.graph.node for o in n.output]
    nodes = [n for n in m.graph.node if n.output]
    if nodes and names:
        r.choice(nodes).output[0] = r.choice(names)


def _cycle(m, r):
    outputs = [o for n in m.graph.node for o in n.output]
    nodes = [n for n in m.graph.node if n.input]
    if nodes and outputs:
        n = r.choice(nodes)
        n.input[r.randrange(len(n.input))] = r.choice(outputs)


def _drop_attribute(m, r):
    nodes = [n for n in m.graph.node if n.attribute]
    if nodes:
        n = r.choice(nodes)
        del n.attribute[r.randrange(len(n.attribute))]


def _retype_attribute(m, r):
    nodes = [n for n in m.graph.node if n.attribute]
    if nodes:
        attr = r.choice(list(r.choice(nodes).attribute))
        attr.CopyFrom(helper.make_attribute(attr.name, r.choice([3, 2.5, [1, 2], "s", [0.5]])))


def _odd_attribute_value(m, r):
    ints = [a for n in m.graph.node for a in n.attribute if a.type in (onnx.AttributeProto.INT, onnx.AttributeProto.INTS)]
    if ints:
        attr, value = r.choice(ints), r.choice([-5, -1, 0, 1, 2, 7, 1 << 40, -(1 << 40)])
        if attr.type == onnx.AttributeProto.INT:
            attr.i = value
        elif attr.ints:
            attr.ints[r.randrange(len(attr.ints))] = value
        else:
            attr.ints.append(value)


def _initializer_dims(m, r):
    if m.graph.initializer:
        t = r.choice(list(m.graph.initializer))
        if t.dims:
            t.dims[r.randrange(len(t.dims))] = r.choice([0, -1, 3, 1 << 40])
        else:
            t.dims.append(r.choice([0, 2, 5]))


def _initializer_type(m, r):
    if m.graph.initializer:
        r.choice(list(m.graph.initializer)).data_type = r.choice(ELEM_TYPES)


def _initializer_bytes(m, r):
    if m.graph.initializer:
        t = r.choice(list(m.graph.initializer))
        t.raw_data = t.raw_data[: r.randrange(len(t.raw_data) + 1)] if t.raw_data else b"\x01\x02\x03"


def _input_dim(m, r):
    dims = [d for i in m.graph.input for d in i.type.tensor_type.shape.dim]
    if dims:
        d, value = r.choice(dims), r.choice([0, -1, 1 << 40, "sym", 7])
        if isinstance(value, str):
            d.dim_param = value
        else:
            d.dim_value = value


def _input_type(m, r):
    if m.graph.input:
        r.choice(list(m.graph.input)).type.tensor_type.elem_type = r.choice(ELEM_TYPES)


def _opset(m, r):
    for imp in m.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = r.choice([1, 7, 12, 30, 100, -3])


def _op_type(m, r):
    if m.graph.node:
        r.choice(list(m.graph.node)).op_type = r.choice(OP_TYPES)


def _domain(m, r):
    if m.graph.node:
        r.choice(list(m.graph.node)).domain = r.choice(["com.microsoft", "sparsec", "weird.domain", "ai.onnx.ml"])


def _output_name(m, r):
    if m.graph.output:
        m.graph.output[r.randrange(len(m.graph.output))].name = r.choice(["missing_value", ""])


def _drop_node(m, r):
    if m.graph.node:
        del m.graph.node[r.randrange(len(m.graph.node))]


def _drop_input(m, r):
    if m.graph.input:
        del m.graph.input[r.randrange(len(m.graph.input))]


MUTATIONS = {f.__name__.lstrip("_"): f for f in (
    _rename_input, _duplicate_output, _cycle, _drop_attribute, _retype_attribute, _odd_attribute_value,
    _initializer_dims, _initializer_type, _initializer_bytes, _input_dim, _input_type, _opset, _op_type, _domain,
    _output_name, _drop_node, _drop_input)}
BYTE_MUTATIONS = ("flip_bytes", "truncate")


def mutate(model: onnx.ModelProto, seed: int) -> tuple[onnx.ModelProto | bytes, str]:
    """The trial's broken model (or its bytes) and what was done to it: one mutation, a second
    three times in ten."""
    r = random.Random(seed)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    kinds = [r.choice(list(MUTATIONS) + list(BYTE_MUTATIONS))]
    if kinds[0] not in BYTE_MUTATIONS and r.random() < 0.3:
        kinds.append(r.choice(list(MUTATIONS)))
    for kind in kinds:
        if kind in BYTE_MUTATIONS:
            data = bytearray(copy.SerializeToString())
            if kind == "truncate":
                return bytes(data[: r.randrange(len(data))]), kind
            for _ in range(r.randint(1, 6)):
                data[r.randrange(len(data))] = r.randrange(256)
            return bytes(data), kind
        MUTATIONS[kind](copy, r)
    return copy, "+".join(kinds)


# --- one trial -----------------------------------------------------------------------------------
def _differs(got, want) -> str | None:
    for index, (a, b) in enumerate(zip(got, want)):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or a.dtype != b.dtype:
            return f"output {index}: {a.dtype}{list(a.shape)} vs ORT {b.dtype}{list(b.shape)}"
        if a.dtype.kind in "fc" and not np.allclose(a, b, rtol=1e-3, atol=1e-4, equal_nan=True):
            return f"output {index}: values differ"
        if a.dtype.kind in "iub" and not np.array_equal(a, b):
            return f"output {index}: values differ"
    return None


def run_trial(model, feeds: dict) -> tuple[str, str]:
    """(status, detail) of compiling and running ``model`` (a ModelProto, bytes or a path)."""
    import onnxruntime

    import sparsec
    from sparsec.errors import SparsecError

    source = model
    if isinstance(model, bytes):
        source = RESULTS_DIR / f"fuzz_{os.getpid()}.onnx"
        source.write_bytes(model)
    try:
        compiled = sparsec.compile(source)
        names = [spec.name for spec in compiled.inputs]
        got = compiled.run({name: feeds[name] for name in names if name in feeds})
    except SparsecError as err:
        return "clean", f"{type(err).__name__}: {str(err)[:200]}"
    except Exception as err:
        return "bad", f"{type(err).__name__}: {str(err)[:300]}\n{traceback.format_exc()[-1200:]}"
    try:
        data = model if isinstance(model, bytes) else model.SerializeToString()
        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
        want = session.run(None, {i.name: feeds[i.name] for i in session.get_inputs() if i.name in feeds})
    except Exception:  # ORT refuses the model or the feeds: nothing to compare with
        return "ok", "ORT does not run it"
    why = _differs(got, want)
    return ("mismatch", why) if why else ("ok", "matches ORT")


def _case_feeds(case) -> dict:
    return {k: v for k, v in case.feeds(case.data_sets[0][0]).items() if isinstance(v, np.ndarray)}


def _trial(name: str, seed: int) -> dict:
    case = cases_by_name()[name]
    model, kind = mutate(case.model, seed)
    status, detail = run_trial(model, _case_feeds(case))
    return {"case": name, "seed": seed, "mutation": kind, "status": status, "detail": detail}


def fuzz_models(minutes: float, seed: int, out: Path, jobs: int = 2) -> Counter:
    """Trials for ``minutes`` in node_suite's worker processes (a crash or hang fails its trial alone)."""
    import onnxruntime  # noqa: F401 - imported once, before the forks

    import sparsec  # noqa: F401

    names = read_list(TVM_LIST)
    r = random.Random(seed)
    deadline = time.monotonic() + minutes * 60
    counts: Counter = Counter()

    def trials():
        while time.monotonic() < deadline:
            yield r.choice(names), r.randrange(1 << 30)

    with out.open("a") as log:
        def record(result: dict) -> None:
            if "task" in result:  # the pool's record of a trial that crashed or hung its worker
                name, trial_seed = result["task"]
                kind = OUTCOME_OF_FAILED_TASK.get(result["reason"].split(":")[0], "harness")
                result = {"case": name, "seed": trial_seed, "mutation": "?", "status": kind, "detail": result["reason"]}
            counts[result["status"]] += 1
            log.write(json.dumps(result) + "\n")
            log.flush()
            if result["status"] not in ("ok", "clean"):
                detail = result["detail"].splitlines()[0] if result["detail"] else ""
                print(f"{result['status']}: {result['case']} seed {result['seed']} ({result['mutation']}): {detail}", flush=True)

        run_tasks(trials(), _trial, jobs=jobs, timeout=TRIAL_TIMEOUT, on_result=record)
    return counts


# --- run-time feeds ------------------------------------------------------------------------------
def feed_mutations(feeds: dict) -> list[tuple[str, object]]:
    variants = []
    for name, a in feeds.items():
        readonly = a.copy()
        readonly.flags.writeable = False
        for kind, value in {
            "other float": a.astype(np.float64) if a.dtype.kind == "f" else a.astype(np.float32),
            "int64": a.astype(np.int64) if a.dtype.kind != "f" else np.zeros(a.shape, np.int64),
            "rank + 1": a[None],
            "flattened": a.reshape(-1),
            "empty": np.zeros((0,) + a.shape[1:], a.dtype),
            "doubled": np.concatenate([a, a]) if a.ndim else a,
            "strided": np.repeat(a, 2, axis=-1)[..., ::2] if a.ndim else a,
            "fortran": np.asfortranarray(a),
            "read-only": readonly,
            "nan": np.full_like(a, np.nan) if a.dtype.kind == "f" else a,
            "list": a.tolist(),
            "scalar": 3,
            "none": None,
            "strings": np.array(["a"] * max(a.size, 1)),
            "objects": np.array([object()] * max(a.size, 1)),
        }.items():
            variants.append((f"{name}: {kind}", {**feeds, name: value}))
    return variants + [("no inputs", {}), ("an extra input", {**feeds, "extra": np.zeros(1, np.float32)}),
                       ("not a dict", [1, 2])]


def fuzz_feeds(cases: int, seed: int) -> Counter:
    import onnxruntime

    import sparsec
    from sparsec.errors import SparsecError

    counts: Counter = Counter()
    for name in random.Random(seed).sample(read_list(TVM_LIST), cases):
        case = cases_by_name()[name]
        compiled = sparsec.compile(case.model)
        session = onnxruntime.InferenceSession(case.model.SerializeToString(), providers=["CPUExecutionProvider"])
        for kind, feeds in feed_mutations(_case_feeds(case)):
            try:
                got = compiled.run(feeds)
            except SparsecError:
                counts["clean"] += 1
                continue
            except Exception as err:
                status, detail = "bad", f"{type(err).__name__}: {str(err)[:200]}"
            else:
                try:
                    want = session.run(None, feeds)
                except Exception:
                    status, detail = "ok", ""
                else:
                    why = _differs(got, want)
                    status, detail = ("mismatch", why) if why else ("ok", "")
            counts[status] += 1
            if status not in ("ok", "clean"):
                print(f"{status}: {name} ({kind}): {detail}", flush=True)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="model mutations: how long to run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "fuzz.jsonl", help="one JSON line per trial")
    parser.add_argument("--feeds", action="store_true", help="fuzz run-time inputs instead of models")
    parser.add_argument("--cases", type=int, default=25, help="--feeds: how many cases")
    parser.add_argument("--replay", nargs=2, metavar=("CASE", "SEED"), help="rebuild one trial's model")
    parser.add_argument("--save", type=Path, help="--replay: write the model here")
    args = parser.parse_args(argv)
    if args.replay:
        case = cases_by_name()[args.replay[0]]
        model, kind = mutate(case.model, int(args.replay[1]))
        if args.save:
            args.save.write_bytes(model if isinstance(model, bytes) else model.SerializeToString())
        print(kind, *run_trial(model, _case_feeds(case)))
        return 0
    RESULTS_DIR.mkdir(exist_ok=True)
    counts = fuzz_feeds(args.cases, args.seed) if args.feeds else fuzz_models(args.minutes, args.seed, args.out)
    print(dict(counts))
    return 1 if set(counts) - {"ok", "clean"} else 0


if __name__ == "__main__":
    sys.exit(main())
