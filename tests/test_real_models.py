"""Real architectures and trained weights, compiled for llvm and compared with ORT."""

import functools
from pathlib import Path

import numpy as np
import onnx
import pytest

import sparsec
from conftest import assert_matches_ort

hf = pytest.importorskip("sparsec.models.hf", reason="needs the models extra (torch, transformers)")
pytestmark = pytest.mark.slow


@functools.cache
def exported(name: str) -> onnx.ModelProto:
    return getattr(hf, name)()


def token_feeds(rng, batch, seq, vocab=1000):
    mask = np.ones((batch, seq), np.int64)
    mask[0, -3:] = 0  # padding in the first row exercises the attention mask
    return {"input_ids": rng.integers(0, vocab, (batch, seq)).astype(np.int64), "attention_mask": mask}


@pytest.mark.parametrize("name, batch, seq", [("minilm", 2, 16), ("minilm", 1, 128), ("bert", 2, 12), ("opt", 2, 12),
                                              ("opt", 1, 1)])
def test_transformer_matches_ort(name, batch, seq, rng):
    model = exported(name)
    compiled = sparsec.compile(model, dims={"batch": batch, "sequence": seq})
    if name == "opt":  # fc2 is Gemm(Relu(fc1), W^T, b): relu-skip takes it, in both layers
        assert compiled.report["rewrites"].get("relu-skip") == 2
    feeds = token_feeds(rng, batch, seq)
    if seq == 1:  # one token (a decode step): padding it would mask the whole row
        feeds["attention_mask"][:] = 1
    assert_matches_ort(compiled, model, feeds)


@pytest.mark.parametrize("name", ["minilm", "bert"])
def test_transformer_with_unpinned_dims(name, rng):
    """Compiled once with batch and sequence symbolic (as exported), then run at several shapes:
    position ids come from Range(0, sequence), attention scores are [batch, heads, seq, seq]."""
    model = exported(name)
    compiled = sparsec.compile(model)
    assert {d for spec in compiled.inputs for d in spec.shape} >= {"batch", "sequence"}
    for batch, seq in ((1, 7), (2, 33), (3, 16)):
        assert_matches_ort(compiled, model, token_feeds(rng, batch, seq))


@functools.cache
def exported_moe(name: str, top_k: int, exporter: str) -> onnx.ModelProto:
    return getattr(hf, name)(top_k=top_k, exporter=exporter)


@pytest.mark.parametrize("name, top_k, exporter", [
    ("mixtral", 2, "torchscript"), ("mixtral", 1, "torchscript"), ("qwen2_moe", 2, "torchscript"),
    ("qwen3_moe", 2, "torchscript"), ("mixtral", 2, "dynamo"), ("qwen2_moe", 2, "dynamo"), ("qwen3_moe", 2, "dynamo")])
def test_hf_batched_mm_moe_dispatches_and_matches_ort(name, top_k, exporter, rng):
    """transformers' batched_mm experts (every token's expert weights gathered per slot), from
    both of torch's exporters, become sparsec.MoE dispatch; outputs equal ORT's on the original
    file, also when every token routes to the same experts and for a single token."""
    model = exported_moe(name, top_k, exporter)
    compiled = sparsec.compile(model, dims={"batch": 2, "sequence": 8})
    assert compiled.report["rewrites"].get("moe-dispatch") == 1
    (found,) = compiled.report["details"]["moe-dispatch"]["moe"]
    assert (found["layout"], found["k"], found["gated"], found["activation"]) == ("batched_mm", top_k, True, "silu")
    feeds = token_feeds(rng, 2, 8)
    assert_matches_ort(compiled, model, feeds)
    feeds["input_ids"][:] = 7  # every token the same: all routed to the same experts
    assert_matches_ort(compiled, model, feeds)
    single = sparsec.compile(model, dims={"batch": 1, "sequence": 1})
    assert single.report["rewrites"].get("moe-dispatch") == 1
    assert_matches_ort(single, model, {"input_ids": np.array([[11]], np.int64), "attention_mask": np.ones((1, 1), np.int64)})


@functools.cache
def exported_eager(name: str, **kw) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """An ``eager`` export and a ``batched_mm`` export of the same weights (same seed)."""
    return getattr(hf, name)(experts_implementation="eager", **kw), getattr(hf, name)(**kw)


def ort_or_none(model: onnx.ModelProto, feeds: dict):
    import onnxruntime as ort
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    try:
        return session.run(None, feeds)[0]
    except Exception as error:  # the trace-specialised Split fails on another number of experts hit
        assert "Split" in str(error)
        return None


@pytest.mark.parametrize("name, kw, traced", [("mixtral", (), 4), ("qwen2_moe", (), 8), ("qwen3_moe", (), 8),
                                              ("mixtral", (("experts", 8), ("top_k", 1), ("trace_shape", (1, 3))), 3),
                                              ("qwen3_moe", (("experts", 64), ("top_k", 8)), 41)])
def test_trace_specialised_eager_moe_dispatches_on_every_input(name, kw, traced, rng):
    """transformers' eager experts, traced: a loop unrolled for the experts hit at export time, which
    ORT runs only on inputs that hit as many experts. moe-dispatch rewrites it into dispatch: equal
    to ORT on the file wherever that runs, and to ORT on the batched_mm export of the same weights
    everywhere (all tokens the same, so few experts hit, included)."""
    eager, batched = exported_eager(name, **dict(kw))
    compiled = sparsec.compile(eager, dims={"batch": 2, "sequence": 8})
    assert compiled.report["rewrites"].get("moe-dispatch") == 1
    (found,) = compiled.report["details"]["moe-dispatch"]["moe"]
    assert (found["layout"], found["gated"], found["activation"]) == ("eager", True, "silu")
    assert "trace_specialised" not in compiled.report["details"]["moe-dispatch"]
    assert any(f"unrolled for the {traced} experts hit" in note and "runs on every input" in note
               for note in compiled.report["notes"]["moe-dispatch"])
    runs_on_file = 0
    for trial in range(4):
        feeds = token_feeds(rng, 2, 8)
        if trial == 3:
            feeds["input_ids"][:] = 7  # every token routed to the same top-k experts
        got = compiled.run(feeds)[0]
        np.testing.assert_allclose(got, ort_or_none(batched, feeds), rtol=1e-4, atol=1e-4)
        on_file = ort_or_none(eager, feeds)
        if on_file is not None:
            np.testing.assert_allclose(got, on_file, rtol=1e-4, atol=1e-4)
            runs_on_file += 1
    assert ort_or_none(eager, feeds) is None  # the file fails where the dispatch runs
    if traced == found["experts"]:  # random tokens hit every expert, as the trace did
        assert runs_on_file >= 2


def test_eager_moe_dispatches_with_unpinned_dims(rng):
    """Compiled with batch and sequence symbolic, then run at shapes unlike the trace's, a single
    token included: equal to ORT on the batched_mm export of the same weights."""
    eager, batched = exported_eager("mixtral")
    compiled = sparsec.compile(eager)
    assert compiled.report["rewrites"].get("moe-dispatch") == 1
    for batch, seq in ((1, 1), (3, 5)):
        feeds = token_feeds(rng, batch, seq)
        feeds["attention_mask"][:] = 1
        np.testing.assert_allclose(compiled.run(feeds)[0], ort_or_none(batched, feeds), rtol=1e-4, atol=1e-4)


def _edited(model: onnx.ModelProto, edit) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    edit({n.name: n for n in copy.graph.node})
    return copy


def _greater_than_a_matrix_zero(nodes):
    """Greater(counts, zeros [1, 1]): the hits become [1, E], each piece (0, e), every step expert 0."""
    nodes["/model/model/layers.0/mlp/experts/Constant_2"].attribute[0].t.CopyFrom(
        onnx.numpy_helper.from_array(np.zeros((1, 1), np.int64)))


def _mask_rows_cast_to_int(nodes):
    """NonZero of a mask row cast to int32 rather than bool (a one-hot of 0.5s would read as zeros)."""
    for node in nodes.values():
        if node.op_type == "Cast" and node.input[0].startswith("/model/model/layers.0/mlp/experts/Gather"):
            node.attribute[0].i = onnx.TensorProto.INT32


@pytest.mark.parametrize("edit, why", [(_greater_than_a_matrix_zero, "not those the mask routes any token to"),
                                       (_mask_rows_cast_to_int, "expected Gather")])
def test_eager_moe_lookalikes_are_not_rewritten(edit, why):
    """Loops that look like eager experts but would compute something else are left as written,
    with the reason in the report."""
    eager, _ = exported_eager("mixtral")
    model = _edited(eager, edit)
    kept = sparsec.compile(model, dims={"batch": 2, "sequence": 8}, backend="ort")
    assert "moe-dispatch" not in kept.report["rewrites"]
    assert any(why in note for note in kept.report["notes"]["moe-dispatch"])


def test_eager_moe_that_is_not_a_whole_loop_is_refused_with_the_reason(rng):
    """A loop whose steps do not cover every expert id hit (one step's term removed) is not the
    MoE: not rewritten, and the TVM build is refused with the reason instead of a TVM error."""
    eager, _ = exported_eager("mixtral")

    def drop_the_last_step(nodes):  # the top Add becomes Identity of the sum of the other steps
        top = nodes["/model/model/layers.0/mlp/experts/Add_11"]
        top.op_type, top.input[:] = "Identity", top.input[:1]

    model = _edited(eager, drop_the_last_step)
    with pytest.raises(sparsec.CompileError, match="do not use each of the 4 expert ids once(.|\n)*"
                                                   "unrolled for the 4 experts hit while tracing"):
        sparsec.compile(model, dims={"batch": 2, "sequence": 8})
    kept = sparsec.compile(model, dims={"batch": 2, "sequence": 8}, backend="ort")  # runs as written, flagged
    assert kept.report["details"]["moe-dispatch"]["trace_specialised"] == [
        {"node": "/model/model/layers.0/mlp/experts/NonZero", "experts_traced": 4}]
    assert_matches_ort(kept, model, token_feeds(rng, 2, 8))


def test_trained_cnn_from_pypi_matches_ort(rng):
    rapidocr = pytest.importorskip("rapidocr_onnxruntime")
    path = Path(rapidocr.__file__).parent / "models" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    graph = sparsec.load(path)
    assert sum(1 for n in graph.walk() if n.op_type == "Conv") > 20  # a real MobileNet, not a toy
    x = rng.random((2, 3, 48, 192)).astype(np.float32)
    compiled = sparsec.compile(str(path), shapes={graph.inputs[0].name: list(x.shape)})
    assert_matches_ort(compiled, str(path), {compiled.inputs[0].name: x})
