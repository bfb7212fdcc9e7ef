"""How much a short call loses when it follows something else: a compiled model's call times
right after idling, busy Python, streaming memory, or an ORT run, call by call.

    python benchmarks/cold_calls.py [--rounds 60] [--threads 2] [--block 32x1] [--tokens 32]

The model is the issue's pruned FFN (768 -> 3072 -> 768, 90% in RxC blocks). Each round runs
every "before" in turn, each followed by four calls of the compiled model; the table gives the
median of each call over the rounds. A call of a few tenths of a millisecond, timed right after
ORT's multi-millisecond one (as interleaved benchmarks do), pays what the first column shows.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import onnxruntime as ort

import sparsec
from sparsec.backends.ort import session_options
from sparsec.models.pruned import pruned_ffn

CALLS = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--block", default="32x1")
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")  # as sparsec bench
    block = tuple(int(v) for v in args.block.split("x"))
    model = pruned_ffn(768, 3072, sparsity=0.9, block=block, tokens=args.tokens)
    compiled = sparsec.compile(model, num_threads=args.threads, tuning_db="off")
    session = ort.InferenceSession(model.SerializeToString(), session_options(args.threads))
    feeds = {"x": np.random.default_rng(0).standard_normal((args.tokens, 768)).astype(np.float32)}
    np.testing.assert_allclose(compiled.run(feeds)[0], session.run(None, feeds)[0], rtol=1e-3, atol=1e-4)
    stream = np.ones(32 << 18, np.float32)  # 32 MiB, the size of this host's L3

    def busy(seconds):
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            pass

    befores = {
        "another call (back to back)": lambda: None,
        "an ORT run of the same model": lambda: session.run(None, feeds),
        "idle 3 ms": lambda: time.sleep(0.003),
        "idle 30 ms": lambda: time.sleep(0.03),
        "busy Python 3 ms": lambda: busy(0.003),
        "busy Python 30 ms": lambda: busy(0.03),
        "reading 32 MiB": stream.sum,
    }
    for _ in range(5):
        compiled.run(feeds)
        session.run(None, feeds)
    times = {name: np.zeros((args.rounds, CALLS)) for name in befores}
    for round_index in range(args.rounds):
        for name, before in befores.items():
            before()
            for call in range(CALLS):
                start = time.perf_counter()
                compiled.run(feeds)
                times[name][round_index, call] = time.perf_counter() - start
    print(f"pruned FFN 90% {args.block} blocks, {args.tokens} rows, {args.threads} threads; "
          f"median of {args.rounds} rounds (ms)\n")
    print("| right after | " + " | ".join(f"call {i + 1}" for i in range(CALLS)) + " |")
    print("|---|" + "---:|" * CALLS)
    for name, ms in times.items():
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in 1e3 * np.median(ms, axis=0)) + " |")


if __name__ == "__main__":
    main()
