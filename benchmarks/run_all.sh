#!/usr/bin/env bash
# Every table of BENCHMARKS.md, made by `sparsec bench` (markdown, JSON, CSV and PNG in out/bench/).
#   benchmarks/run_all.sh [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${1:-2}"
bin=.venv/bin
out=out/bench
mkdir -p "$out"
$bin/python benchmarks/export_models.py out/models
bench() { local name=$1; shift; $bin/sparsec bench "$@" --threads "$threads" \
    --json "$out/$name.json" --csv "$out/$name.csv" --markdown "$out/$name.md" --plot "$out/$name.png" || true; }
m=out/models
bench minilm "$m/minilm-l6.onnx" --batch 1,8 --dim sequence=128 --backends ort,tvm,sparsec --repeat 20
bench encoders "$m/bert-base.onnx" "$m/opt-stack.onnx" --batch 1 --dim sequence=128 --backends ort,sparsec --repeat 10
bench cnn-cls "$m/ppocr-cls.onnx" --shape x=1,3,48,192 --backends ort,sparsec --repeat 30
bench cnn-det "$m/ppocr-det.onnx" --shape x=1,3,320,320 --backends ort,sparsec --repeat 10
moe=("$m/mixtral-moe.onnx" "$m/qwen2-moe.onnx" "$m/qwen3-moe.onnx"
     "$m/mixtral-moe-dynamo.onnx" "$m/qwen2-moe-dynamo.onnx" "$m/qwen3-moe-dynamo.onnx")
bench hf-moe-t1 "${moe[@]}" --batch 1 --dim sequence=1 --backends ort,sparsec --repeat 30
bench hf-moe "${moe[@]}" --batch 1,8 --dim sequence=16 --backends ort,sparsec --repeat 10
bench pruned-ffn --family pruned-ffn --sweep sparsity=0.5,0.7,0.8,0.9,0.95,0.98 --sweep block=16x1,32x1,4x4 \
    --sweep tokens=32 --backends ort,tvm,sparsec --repeat 20
bench pruned-ffn-rows --family pruned-ffn --sweep tokens=1,32,128 --sweep sparsity=0.9 --sweep block=32x1 \
    --backends ort,sparsec --repeat 20
bench pruned-ffn-layers --family pruned-ffn --sweep layers=1,4,12 --sweep sparsity=0.9 --sweep block=16x1,32x1 \
    --sweep tokens=32 --backends ort,sparsec --repeat 30
bench pruned-convnet --family pruned-convnet --sweep sparsity=0.5,0.7,0.9,0.95 --backends ort,tvm,sparsec --repeat 30
bench pruned-ffn-nm --family pruned-ffn --sweep block=2:4,4:8 --sweep tokens=1,8,32 --backends ort,tvm,sparsec --repeat 30
