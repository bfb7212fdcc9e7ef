"""sparsec (TVM, llvm) vs ONNX Runtime on dense models, side by side in one process.

    python benchmarks/dense_vs_ort.py [--threads 2] [--repeat 30]

Both run with the same thread count and without spinning thread pools; medians after warm-up,
runs interleaved (A B A B ...) so machine drift hits both alike.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")

import numpy as np  # noqa: E402

import sparsec  # noqa: E402
from sparsec.backends import ort  # noqa: E402
from sparsec.models import mlp  # noqa: E402


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


def cases():
    yield "MLP 32x768 -> 3072 -> 768 (ReLU)", mlp((768, 3072, 768), batch=32), None, \
        {"x": np.random.default_rng(0).standard_normal((32, 768)).astype(np.float32)}
    try:
        from sparsec.models import hf
    except ImportError:
        return
    rng = np.random.default_rng(0)
    for batch in (1, 8):
        feeds = {"input_ids": rng.integers(0, 30000, (batch, 128)).astype(np.int64),
                 "attention_mask": np.ones((batch, 128), np.int64)}
        yield f"MiniLM-L6 (trained) batch {batch} x 128", hf.minilm(), {"batch": batch, "sequence": 128}, feeds


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    print(f"| model | sparsec ms | ORT ms | sparsec / ORT | compile s |  (threads={args.threads})")
    print("|---|---|---|---|---|")
    for name, model, dims, feeds in cases():
        compiled = sparsec.compile(model, dims=dims, num_threads=args.threads)
        session = ort.make_session(model, args.threads)
        ms = interleaved_medians({"sparsec": lambda: compiled.run(feeds), "ort": lambda: session.run(None, feeds)}, args.repeat)
        print(f"| {name} | {ms['sparsec']:.2f} | {ms['ort']:.2f} | {ms['sparsec'] / ms['ort']:.2f}x | "
              f"{compiled.report['compile_seconds']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
