"""Dense-masked MoE: ONNX Runtime on the original file vs sparsec on the same file vs an oracle
(ONNX Runtime running only the experts the router picked, built here for the given inputs).

    python benchmarks/moe.py [--threads 2] [--repeat 20] [--experts 8,64] [--tokens 1,16,128] [--top-k 1,2]

One process, same threads, runs interleaved with rotating order, medians after warm-up; outputs
checked against ORT on the original. Every timed call follows a read of twice the largest cache,
so each finds its weights in memory, as a layer inside a model does (without it, sparsec and the
oracle, reading the same two experts, warmed each other's next call: the oracle came after
sparsec in two rounds of three). The memory floor is a plain kernel reading as many bytes as
sparsec must, on the same threads, timed the same way: no call reading those bytes can be faster
here, and ORT over it is the most any kernel could gain. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import sparsec  # noqa: E402
from sparsec.backends import ort  # noqa: E402
from sparsec.benchmark.measure import CacheEviction, interleaved_times  # noqa: E402
from sparsec.benchmark.memory_floor import StreamRead  # noqa: E402
from sparsec.models.moe_layers import dense_masked_moe  # noqa: E402


def routing(model: onnx.ModelProto, x: np.ndarray, k: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(expert, token rows, gate weights) for every expert some token picked (softmax before, renormalised)."""
    w = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    logits = x @ w["l0_wr"] + w["l0_br"]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    top = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    vals = np.take_along_axis(probs, top, -1)
    vals /= vals.sum(-1, keepdims=True)
    picked = []
    for e in np.unique(top):
        rows, slots = np.nonzero(top == e)
        picked.append((int(e), rows.astype(np.int64), vals[rows, slots].astype(np.float32)))
    return picked


def weights_read(model: onnx.ModelProto, x: np.ndarray, k: int) -> dict[str, int]:
    """Bytes of weights each contender must read per call: ORT every expert's; the oracle the
    router's and the picked experts'; sparsec the same, but of a ReLU expert with a single row
    only the W2 rows whose activation is not zero (the kernel's skip). At one token these bound
    the speed-up over ORT when both stream from memory at the same rate."""
    w = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    router = w["l0_wr"].nbytes + w["l0_br"].nbytes
    picked = routing(model, x, k)
    expert = lambda e: sum(w[n][e].nbytes for n in ("l0_w1", "l0_b1", "l0_b2"))  # noqa: E731
    second = []
    for e, rows, _ in picked:
        if len(rows) == 1:
            h = np.maximum(x[rows] @ w["l0_w1"][e] + w["l0_b1"][e], 0)
            second.append(int(np.count_nonzero(h)) * w["l0_w2"].shape[-1] * 4)
        else:
            second.append(w["l0_w2"][e].nbytes)
    return {"ort": sum(a.nbytes for n, a in w.items() if n.startswith("l0_")),
            "oracle": router + sum(expert(e) + w["l0_w2"][e].nbytes for e, _, _ in picked),
            "sparsec": router + sum(expert(e) for e, _, _ in picked) + sum(second)}


def oracle(model: onnx.ModelProto, x: np.ndarray, k: int) -> onnx.ModelProto:
    """ORT computing only the picked experts for these inputs: gather their rows, FFN, scatter-add."""
    w = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    tokens, hidden = x.shape
    nodes, inits = [], [numpy_helper.from_array(np.zeros((tokens, hidden), np.float32), "zeros")]
    out = "zeros"
    for e, rows, gates in routing(model, x, k):
        p = f"e{e}_"
        inits += [numpy_helper.from_array(rows, p + "rows"), numpy_helper.from_array(rows[:, None], p + "idx"),
                  numpy_helper.from_array(gates[:, None], p + "gate"),
                  numpy_helper.from_array(w["l0_w1"][e], p + "w1"), numpy_helper.from_array(w["l0_b1"][e, 0], p + "b1"),
                  numpy_helper.from_array(w["l0_w2"][e], p + "w2"), numpy_helper.from_array(w["l0_b2"][e, 0], p + "b2")]
        nodes += [helper.make_node("Gather", ["x", p + "rows"], [p + "xs"], axis=0),
                  helper.make_node("MatMul", [p + "xs", p + "w1"], [p + "m1"]),
                  helper.make_node("Add", [p + "m1", p + "b1"], [p + "a1"]),
                  helper.make_node("Relu", [p + "a1"], [p + "h"]),
                  helper.make_node("MatMul", [p + "h", p + "w2"], [p + "m2"]),
                  helper.make_node("Add", [p + "m2", p + "b2"], [p + "y"]),
                  helper.make_node("Mul", [p + "y", p + "gate"], [p + "wy"]),
                  helper.make_node("ScatterND", [out, p + "idx", p + "wy"], [p + "out"], reduction="add")]
        out = p + "out"
    graph = helper.make_graph(nodes, "oracle", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [tokens, hidden])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, [tokens, hidden])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--ffn", type=int, default=2048)
    parser.add_argument("--experts", default="8,64")
    parser.add_argument("--tokens", default="1,16,128")
    parser.add_argument("--top-k", default="1,2")
    args = parser.parse_args()
    print(f"| experts | top-k | tokens | ORT ms | sparsec ms | oracle ms | sparsec vs ORT | sparsec / oracle "
          f"| MB read: ORT / sparsec / oracle | ORT / sparsec bytes | floor ms | ORT / floor |  "
          f"(hidden {args.hidden}, FFN {args.ffn}, {args.threads} threads, median of {args.repeat})")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    for experts in map(int, args.experts.split(",")):
        for k in map(int, args.top_k.split(",")):
            for tokens in map(int, args.tokens.split(",")):
                print(table_row(args, experts, k, tokens), flush=True)


def table_row(args, experts: int, k: int, tokens: int) -> str:
    """One configuration, measured; its models and sessions go when it returns (E=64 holds ~4 GB
    of them: kept across rows, the runs reached this machine's 24 GB and were killed)."""
    model = dense_masked_moe(args.hidden, args.ffn, experts, k, tokens=tokens)
    x = np.random.default_rng(tokens).standard_normal((tokens, args.hidden)).astype(np.float32)
    feeds = {"x": x}
    compiled = sparsec.compile(model, num_threads=args.threads)
    assert compiled.report["rewrites"].get("moe-dispatch") == 1
    original, best = ort.make_session(model, args.threads), ort.make_session(oracle(model, x, k), args.threads)
    want = original.run(None, feeds)[0]
    for got in (compiled.run(feeds)[0], best.run(None, feeds)[0]):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
    read = weights_read(model, x, k)
    floor = StreamRead(read["sparsec"], args.threads)
    runs = {"ort": lambda: original.run(None, feeds), "sparsec": lambda: compiled.run(feeds),
            "oracle": lambda: best.run(None, feeds), "floor": floor}
    for fn in runs.values():
        for _ in range(3):
            fn()
    ms = {key: float(np.median(v)) * 1e3 for key, v in interleaved_times(runs, args.repeat, before_each=CacheEviction()).items()}
    return (f"| {experts} | {k} | {tokens} | {ms['ort']:.3f} | {ms['sparsec']:.3f} | {ms['oracle']:.3f} | "
            f"{ms['ort'] / ms['sparsec']:.1f}x | {ms['sparsec'] / ms['oracle']:.2f} | "
            f"{read['ort'] / 1e6:.1f} / {read['sparsec'] / 1e6:.1f} / {read['oracle'] / 1e6:.1f} | "
            f"{read['ort'] / read['sparsec']:.1f}x | {ms['floor']:.3f} | {ms['ort'] / ms['floor']:.1f}x |")


if __name__ == "__main__":
    main()
