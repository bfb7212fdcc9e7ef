"""Parameter scaling: a dense-masked MoE layer with E experts, each the size of one dense FFN
(hidden 128 -> FFN 2048 -> 128, ReLU), top-1, against that dense FFN alone.

    python benchmarks/moe_scaling.py [--experts 1,8,64,256,1024] [--tokens 1,16] [--threads 2] [--repeat 30]

Every call gets a fresh random token batch (different calls route to different experts, as in
real use, so an expert's weights are rarely in cache). Per E and T: sparsec and ORT on the same
file, and the dense FFN (best of ORT and sparsec) measured the same way, interleaved in one
process, medians after warm-up; outputs checked against ORT. Models whose weights pass 1.8 GB are
written with ONNX external data (E=1024: 2 GiB) and compiled from the file, as a user would.
Prints a markdown table: latency vs dense next to parameters vs dense, with the weight bytes each
call must read (router + k experts' FFNs).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")

import numpy as np  # noqa: E402
import onnx  # noqa: E402

import sparsec  # noqa: E402
from sparsec.backends import ort  # noqa: E402
from sparsec.benchmark.measure import interleaved_times  # noqa: E402
from sparsec.models import mlp  # noqa: E402
from sparsec.models.moe_layers import dense_masked_moe  # noqa: E402

EXTERNAL_ABOVE = 1_800_000_000  # bytes of weights; protobuf caps a file at 2 GB


def fresh_inputs(count: int, tokens: int, hidden: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((tokens, hidden)).astype(np.float32)} for _ in range(count)]


def cycling(run, feeds: list[dict]):
    """A zero-argument call that feeds the next input each time."""
    state = {"i": 0}

    def call():
        feed = feeds[state["i"] % len(feeds)]
        state["i"] += 1
        return run(feed)

    return call


def save(model: onnx.ModelProto, folder: Path, name: str, weight_bytes: int) -> str:
    path = folder / f"{name}.onnx"
    external = weight_bytes > EXTERNAL_ABOVE
    onnx.save_model(model, path, save_as_external_data=external, all_tensors_to_one_file=True,
                    location=f"{name}.weights" if external else None)
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--ffn", type=int, default=2048)
    parser.add_argument("--experts", default="1,8,64,256,1024")
    parser.add_argument("--tokens", default="1,16")
    parser.add_argument("--folder", default=None, help="where the models are written (default: a temporary folder)")
    args = parser.parse_args()
    h, f = args.hidden, args.ffn
    expert_bytes = (2 * h * f + f + h) * 4
    folder = Path(args.folder or tempfile.mkdtemp(prefix="sparsec-moe-scaling-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"hidden {h}, FFN {f}, top-1, {args.threads} threads, median of {args.repeat} calls, a fresh input each call\n")
    print("| experts | tokens | params vs dense | weights MB | MB read per call | sparsec ms | ORT ms | dense ms (best) "
          "| sparsec vs dense | sparsec vs ORT |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    dense_path = save(mlp((h, f, h), activation="relu", batch="tokens"), folder, "dense", expert_bytes)
    dense = sparsec.compile(dense_path, num_threads=args.threads)
    dense_ort = ort.make_session(dense_path, args.threads)
    for experts in map(int, args.experts.split(",")):
        path = save(dense_masked_moe(h, f, experts, 1, activation="relu"), folder, f"moe-e{experts}",
                    experts * expert_bytes)
        compiled = sparsec.compile(path, num_threads=args.threads)
        assert compiled.report["rewrites"].get("moe-dispatch") == 1, compiled.report["notes"]
        original = ort.make_session(path, args.threads)
        for tokens in map(int, args.tokens.split(",")):
            feeds = fresh_inputs(args.repeat + 3, tokens, h, seed=experts * 1000 + tokens)
            want = original.run(None, feeds[0])[0]
            np.testing.assert_allclose(compiled.run(feeds[0])[0], want, rtol=1e-3, atol=1e-4)
            runs = {"sparsec": cycling(compiled.run, feeds), "ort": cycling(lambda d: original.run(None, d), feeds),
                    "dense-sparsec": cycling(dense.run, feeds), "dense-ort": cycling(lambda d: dense_ort.run(None, d), feeds)}
            for fn in runs.values():
                for _ in range(3):
                    fn()
            ms = {key: float(np.median(v)) * 1e3 for key, v in interleaved_times(runs, args.repeat).items()}
            dense_ms = min(ms["dense-sparsec"], ms["dense-ort"])
            routed = min(experts, tokens)  # experts a call can touch at most (top-1)
            read_mb = (h * experts * 4 + routed * expert_bytes) / 1e6
            print(f"| {experts} | {tokens} | {experts}x | {experts * expert_bytes / 1e6:.0f} | <= {read_mb:.1f} | "
                  f"{ms['sparsec']:.3f} | {ms['ort']:.3f} | {dense_ms:.3f} | {ms['sparsec'] / dense_ms:.2f}x | "
                  f"{ms['ort'] / ms['sparsec']:.1f}x |", flush=True)
        del compiled, original


if __name__ == "__main__":
    main()
