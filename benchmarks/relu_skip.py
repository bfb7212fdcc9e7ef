"""relu-skip vs dense, side by side in one process: sparsec with the pass, sparsec without passes
(plain TVM), and ONNX Runtime, on the FFN's second MatMul and on the whole FFN.

    python benchmarks/relu_skip.py [--threads 2] [--repeat 20] [--tokens 1,32,128] [--zeros 0.1,0.5,0.9,0.99]

hidden 768, FFN 3072, static token counts. "second MatMul" is ``Relu(a) @ W2 + b2`` fed a
pre-activation ``a`` with the given fraction of negative entries; "FFN" is
``sparsec.models.relu_ffn`` (its first bias makes that fraction of the activations zero).
Patterns: ``token`` (each token's zeros independent: T tokens share about ``zeros ** T`` all-zero
columns, so the union is nearly dense for T >= 32) and ``neuron`` (the same columns zero for every
token, as for dead neurons; only run for T > 1, where it differs). Same thread count everywhere,
no spinning thread pools; medians after warm-up, runs interleaved so drift hits all alike.
Ratios: dense / relu-skip (speed-up of the pass) and ORT / relu-skip.
"""

from __future__ import annotations

import argparse
import os
import time
from statistics import NormalDist

os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")

import numpy as np  # noqa: E402
import tvm  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from tvm import relax  # noqa: E402

import sparsec  # noqa: E402
from sparsec.backends import ort  # noqa: E402
from sparsec.models.relu_ffn import relu_ffn  # noqa: E402

HIDDEN, FFN = 768, 3072


def interleaved_medians(fns: dict, repeat: int, warmup: int = 3) -> dict:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeat):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {k: float(np.median(v)) * 1e3 for k, v in times.items()}


def second_matmul(tokens: int, seed: int = 0):
    """``y = Relu(a) @ W2 + b2`` with a[tokens, FFN]."""
    rng = np.random.default_rng(seed)
    w2 = (rng.standard_normal((FFN, HIDDEN)) / np.sqrt(FFN)).astype(np.float32)
    b2 = (0.1 * rng.standard_normal(HIDDEN)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Relu", ["a"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["m"]),
         helper.make_node("Add", ["m", "b2"], ["y"])], "second_matmul",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [tokens, FFN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [tokens, HIDDEN])],
        [numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(b2, "b2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def pre_activation(tokens: int, zeros: float, pattern: str, seed: int = 1) -> np.ndarray:
    """a[tokens, FFN] whose Relu has about ``zeros`` of its entries zero, in the given pattern."""
    rng = np.random.default_rng(seed)
    a = np.abs(rng.standard_normal((tokens, FFN))).astype(np.float32) + 0.01
    if pattern == "neuron":
        a[:, rng.permutation(FFN) < round(zeros * FFN)] *= -1
        return a
    shift = NormalDist().inv_cdf(zeros)
    return (rng.standard_normal((tokens, FFN)) - shift).astype(np.float32)


def measure(model, feeds: dict, tokens: int, threads: int, repeat: int) -> dict:
    """Medians (ms): the whole model per call through the VM, without Python glue ("skip",
    "dense"), ORT's session.run ("ort"), and the second MatMul's kernel alone ("skip_kernel",
    "dense_kernel": its call in the VM, timed by an instrument around it)."""
    skip = sparsec.compile(model, passes=["relu-skip"], num_threads=threads)
    assert skip.report["rewrites"].get("relu-skip"), skip.report["notes"]
    dense = sparsec.compile(model, passes=[], num_threads=threads)
    session = ort.make_session(model, threads)
    reference = session.run(None, feeds)[0]
    for compiled in (skip, dense):  # correctness in the same run
        np.testing.assert_allclose(compiled.run(feeds)[0], reference, rtol=1e-3, atol=1e-3)
    calls = {name: _vm_call(compiled, feeds) for name, compiled in (("skip", skip), ("dense", dense))}
    kernels = {name + "_kernel": _kernel_timer(compiled, feeds, tokens) for name, compiled in (("skip", skip), ("dense", dense))}
    ms = interleaved_medians({**calls, "ort": lambda: session.run(None, feeds)}, repeat)
    for timer in kernels.values():
        timer.times.clear()
    interleaved_medians({k: t.call for k, t in kernels.items()}, repeat, warmup=0)
    ms.update({k: float(np.median(t.times)) * 1e3 for k, t in kernels.items()})
    return ms


def _vm_call(compiled, feeds: dict):
    vm = relax.VirtualMachine(compiled._runner.executable, tvm.cpu())
    args = [tvm.runtime.tensor(feeds[spec.name]) for spec in compiled.inputs]
    return lambda: vm["main"](*args)


class _kernel_timer:
    """Times the VM's call of the second MatMul's kernel: the call reading the [T, FFN]
    activations first and writing [T, HIDDEN] last (calls are destination-passing)."""

    def __init__(self, compiled, feeds: dict, tokens: int):
        self.vm = relax.VirtualMachine(compiled._runner.executable, tvm.cpu())
        self.args = [tvm.runtime.tensor(feeds[spec.name]) for spec in compiled.inputs]
        self.shapes = ((tokens, FFN), (tokens, HIDDEN))
        self.times, self.start = [], 0.0
        self.vm.set_instrument(tvm.runtime.convert(self.instrument))

    def instrument(self, func, symbol, before, ret, *args):
        shapes = [tuple(a.shape) for a in args if isinstance(a, tvm.runtime.Tensor)]
        if len(shapes) >= 2 and (shapes[0], shapes[-1]) == self.shapes:
            if before:
                self.start = time.perf_counter()
            else:
                self.times.append(time.perf_counter() - self.start)
        return 0

    def call(self):
        self.vm["main"](*self.args)


def cases(tokens_list, zeros_list):
    for tokens in tokens_list:
        for pattern in ("token", "neuron") if tokens > 1 else ("token",):
            for zeros in zeros_list:
                yield tokens, pattern, zeros


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--tokens", default="1,32,128")
    parser.add_argument("--zeros", default="0.1,0.5,0.9,0.99")
    parser.add_argument("--what", default="matmul,ffn", help="matmul (the second MatMul), ffn (the whole FFN), or both")
    args = parser.parse_args()
    tokens_list = [int(t) for t in args.tokens.split(",")]
    zeros_list = [float(z) for z in args.zeros.split(",")]
    what = args.what.split(",")
    print(f"hidden {HIDDEN}, FFN {FFN}, threads {args.threads}, medians of {args.repeat}")
    print("| what | T | pattern | zeros | active cols | kernel: relu-skip ms | dense ms | dense / skip | "
          "model: relu-skip ms | dense ms | ORT ms | dense / skip | ORT / skip |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for kind in what:
        models = {}
        for tokens, pattern, zeros in cases(tokens_list, zeros_list):
            if kind == "matmul":
                model = models.setdefault(tokens, second_matmul(tokens))
                feeds = {"a": pre_activation(tokens, zeros, pattern)}
                h = np.maximum(feeds["a"], 0)
            else:
                model = relu_ffn(HIDDEN, FFN, tokens=tokens, zero_fraction=zeros, pattern=pattern)
                feeds = {"x": rng.standard_normal((tokens, HIDDEN)).astype(np.float32)}
                h = _activations(model, feeds)
            active = float((h != 0).any(axis=0).mean())
            ms = measure(model, feeds, tokens, args.threads, args.repeat)
            print(f"| {'second MatMul' if kind == 'matmul' else 'FFN'} | {tokens} | {pattern} | {zeros:.0%} | {active:.0%} | "
                  f"{ms['skip_kernel']:.3f} | {ms['dense_kernel']:.3f} | {ms['dense_kernel'] / ms['skip_kernel']:.2f}x | "
                  f"{ms['skip']:.3f} | {ms['dense']:.3f} | {ms['ort']:.3f} | {ms['dense'] / ms['skip']:.2f}x | "
                  f"{ms['ort'] / ms['skip']:.2f}x |", flush=True)


def _activations(model, feeds) -> np.ndarray:
    """The Relu output of the FFN (ORT, the model with that value exposed)."""
    import onnx

    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.append(helper.make_tensor_value_info("l0_act", TensorProto.FLOAT, None))
    return ort.run(exposed, feeds)[-1]


if __name__ == "__main__":
    main()
