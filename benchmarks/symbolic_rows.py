"""Symbolic vs static row counts: the same FFN (768 -> 3072 -> 768, ReLU) compiled once with a
symbolic token dim and once per row count, timed with ORT in interleaved rounds.

    python benchmarks/symbolic_rows.py [--repeat 50] [--threads 2] [--model out/models/minilm-l6.onnx]

With ``--model`` (an HF export with inputs ``input_ids`` and ``attention_mask`` over ``batch`` and
``sequence`` dims: an encoder, or a decoder such as the MoE exports), that model is also timed
compiled once unpinned, once pinned per shape, and in ORT, at batch x sequence 8 x 128, 1 x 37
and 4 x 100 or ``--shapes`` (``--encoder-only``: that table alone).

A model exported with a dynamic axis is compiled once and called with any row count; this checks
that doing so costs nothing against compiling for the exact shape.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import onnxruntime as ort

import sparsec
from sparsec.backends.ort import session_options
from sparsec.benchmark.measure import interleaved_times
from sparsec.models.pruned import pruned_ffn

CASES = [("dense", 0.0, (1, 1)), ("90% 32x1 blocks", 0.9, (32, 1)), ("90% 16x1 blocks", 0.9, (16, 1))]
ROWS = (1, 5, 13, 32, 128)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", help="an HF encoder export (inputs input_ids, attention_mask)")
    parser.add_argument("--encoder-only", action="store_true", help="time only --model, not the FFN table")
    parser.add_argument("--shapes", default=",".join(f"{b}x{s}" for b, s in ENCODER_SHAPES),
                        help="batch x sequence shapes for --model, e.g. 1x1,1x16")
    args = parser.parse_args()
    shapes = [tuple(int(v) for v in shape.split("x")) for shape in args.shapes.split(",")]
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")
    options = session_options(args.threads)  # equal threads, no spinning (as sparsec bench)
    if args.encoder_only:
        encoder(args.model, args.threads, max(5, args.repeat // 5), shapes)
        return
    print(f"hidden 768, FFN 3072, {args.threads} threads, median of {args.repeat} interleaved rounds (ms)\n")
    print("| weights | rows | symbolic | static | ORT | symbolic / static | vs ORT |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, sparsity, block in CASES:
        symbolic_model = pruned_ffn(768, 3072, sparsity=sparsity, block=block, tokens="tokens")
        symbolic = sparsec.compile(symbolic_model, num_threads=args.threads, tuning_db="off")
        session = ort.InferenceSession(symbolic_model.SerializeToString(), options)
        for rows in ROWS:
            static = sparsec.compile(pruned_ffn(768, 3072, sparsity=sparsity, block=block, tokens=rows),
                                     num_threads=args.threads, tuning_db="off")
            feeds = {"x": np.random.default_rng(rows).standard_normal((rows, 768)).astype(np.float32)}
            want = session.run(None, feeds)[0]
            for compiled in (symbolic, static):
                np.testing.assert_allclose(compiled.run(feeds)[0], want, rtol=1e-3, atol=1e-4)
            runs = {"symbolic": lambda: symbolic.run(feeds), "static": lambda: static.run(feeds),
                    "ort": lambda: session.run(None, feeds)}
            interleaved_times(runs, 5)
            ms = {k: 1e3 * float(np.median(v)) for k, v in interleaved_times(runs, args.repeat).items()}
            print(f"| {label} | {rows} | {ms['symbolic']:.3f} | {ms['static']:.3f} | {ms['ort']:.3f} "
                  f"| {ms['symbolic'] / ms['static']:.2f} | {ms['ort'] / ms['symbolic']:.1f}x |")


    if args.model:
        encoder(args.model, args.threads, max(5, args.repeat // 5), shapes)


ENCODER_SHAPES = ((8, 128), (1, 37), (4, 100))


def encoder(path: str, threads: int, repeat: int, shapes=ENCODER_SHAPES) -> None:
    """One unpinned compile against one pinned per shape and ORT, interleaved, outputs checked."""
    unpinned = sparsec.compile(path, num_threads=threads, tuning_db="off")
    session = ort.InferenceSession(path, session_options(threads))
    print(f"\n{path}, median of {repeat} interleaved rounds (ms)\n")
    print("| batch x sequence | unpinned | pinned | ORT | unpinned / pinned | unpinned vs ORT |")
    print("|---|---:|---:|---:|---:|---:|")
    for batch, seq in shapes:
        rng = np.random.default_rng(seq)
        feeds = {"input_ids": rng.integers(0, 1000, (batch, seq)).astype(np.int64),
                 "attention_mask": np.ones((batch, seq), np.int64)}
        pinned = sparsec.compile(path, num_threads=threads, tuning_db="off", dims={"batch": batch, "sequence": seq})
        want = session.run(None, feeds)
        for compiled in (unpinned, pinned):
            for got, ref in zip(compiled.run(feeds), want):
                np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4)
        runs = {"unpinned": lambda: unpinned.run(feeds), "pinned": lambda: pinned.run(feeds),
                "ort": lambda: session.run(None, feeds)}
        interleaved_times(runs, 2)
        ms = {k: 1e3 * float(np.median(v)) for k, v in interleaved_times(runs, repeat).items()}
        print(f"| {batch} x {seq} | {ms['unpinned']:.1f} | {ms['pinned']:.1f} | {ms['ort']:.1f} "
              f"| {ms['unpinned'] / ms['pinned']:.2f} | {ms['ort'] / ms['unpinned']:.2f}x |")


if __name__ == "__main__":
    main()
