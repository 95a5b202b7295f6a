"""Every family through the one block: forward against the float64 reference, gradients against
float64 finite differences, packed rows, the KV-cache decode, and the memory plan's record sizes."""

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from ggtune.block import BF16, Tokens
from ggtune.gguf_io import GGUFError, read_model_gguf
from ggtune.graph import Graph, Grads
from ggtune.lora import init_lora
from ggtune.memory import layer_intermediates
from ggtune.model import load_model
from ggtune.names import ALL_KINDS
from reference_model import ReferenceModel
from test_graph import BATCH, BF16_ROUNDING, SEQ, finite_difference_check
from tiny_models import LLAMA31_ROPE, family_config, write_tiny_model

# One tiny model per feature the block reads from the description. SEQ (9) tokens cross the
# gemma3 window of 4 and its pattern of 3 (layers 0, 1 slide, 2 is global).
CASES = {
    "llama3_rope_freqs": dict(arch="llama", llama3_rope=LLAMA31_ROPE, freq_base=500000.0),
    "llama_yarn": dict(arch="llama", rope_scale_linear=4.0, rope_scaling_type="yarn", rope_orig_ctx=16),
    "qwen2_bias": dict(arch="qwen2", freq_base=1000000.0),
    "qwen3_qk_norm_head_dim": dict(arch="qwen3", head_dim=24),
    "gemma3": dict(arch="gemma3", n_layer=3, head_dim=32, n_head_kv=1, sliding_window=4,
                   sliding_window_pattern=3),
}


def write_case(tmp_path, name, **overrides):
    cfg = dict(CASES[name], **overrides)
    arch = cfg.pop("arch")
    return write_tiny_model(tmp_path / f"{name}.gguf", family_config(arch, **cfg))


@pytest.mark.parametrize("name", CASES)
def test_forward_matches_the_float64_reference(tmp_path, name):
    path = write_case(tmp_path, name)
    tokens = np.random.default_rng(0).integers(0, 80, size=24)
    ours = load_model(path, precision="f32").logits(tokens)
    ref = ReferenceModel(path).logits(tokens)
    assert np.max(np.abs(ours - ref)) <= 1e-3 * ref.std()


def gradient_case(tmp_path, name):
    path = write_case(tmp_path, name)
    weights = read_model_gguf(path)
    lora = init_lora(weights, dict.fromkeys(ALL_KINDS, 2), alpha=3.0, seed=0)
    rng = np.random.default_rng(1)
    for pair in lora.pairs.values():  # B = 0 would make every dA zero
        pair.b[:] = 0.2 * rng.standard_normal(pair.b.shape)
    V = weights.hparams.n_vocab
    inputs = rng.integers(0, V, size=(BATCH, SEQ)).astype(np.int32)
    targets = rng.integers(0, V, size=(BATCH, SEQ)).astype(np.int32)
    targets[0, 2] = -1
    return path, weights, lora, inputs, targets


@pytest.mark.parametrize("name", CASES)
def test_lora_gradients_match_finite_differences(tmp_path, name):
    """Every trainable kind, through the family's biases, q/k norms, sandwich norms, GELU gate,
    sliding window, rope variant and embedding scale."""
    finite_difference_check(*gradient_case(tmp_path, name), checkpointing=True)


@pytest.mark.parametrize("name", CASES)
def test_compact_kept_gradients_of_every_family(tmp_path, name):
    """The compact layout (bf16 COMPACT arrays, Gemma's pre-norm o and f among them) against the
    float32 one, within test_graph's bf16 bound; kept and recomputed layers agree bit for bit."""
    _, weights, lora, inputs, targets = gradient_case(tmp_path, name)
    n_layer = weights.hparams.n_layer
    runs = {}
    for kept, keep in ((np.float32, 0), (BF16, n_layer), (BF16, 0)):
        grads = Grads.like(lora)
        Graph(weights, lora, precision="f32", kept=np.dtype(kept)).loss_and_grads(inputs, targets, grads,
                                                                                  keep_layers=keep)
        runs[np.dtype(kept).name, keep] = grads.arrays()
    exact, compact, recomputed = runs["float32", 0], runs["uint16", n_layer], runs["uint16", 0]
    for tensor, g in exact.items():
        np.testing.assert_array_equal(compact[tensor], recomputed[tensor])
        assert np.abs(compact[tensor] - g).max() <= BF16_ROUNDING * np.abs(g).max(), tensor


def test_unknown_architecture_names_the_supported_ones(tmp_path):
    path = write_tiny_model(tmp_path / "m.gguf", family_config("llama"))
    import gguf

    reader = gguf.GGUFReader(path)
    bad = tmp_path / "phi3.gguf"
    w = gguf.GGUFWriter(bad, "phi3")
    for t in reader.tensors:
        w.add_tensor(t.name, np.array(t.data))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with pytest.raises(GGUFError, match=r"phi3\.gguf: general.architecture is 'phi3'; ggtune runs "
                                        r"'llama', 'qwen2', 'qwen3', 'gemma3' models"):
        read_model_gguf(bad)


@pytest.mark.parametrize("name", ["gemma3", "qwen3_qk_norm_head_dim"])
def test_packed_row_trains_like_separate_rows(tmp_path, name):
    """Two samples packed in one row (positions restart, first_key at the second's start) give the
    losses and gradients of the two samples in rows of their own."""
    path = write_case(tmp_path, name)
    weights = read_model_gguf(path)
    lora = init_lora(weights, {"attn_q": 2, "attn_v": 2, "ffn_down": 2, "attn_norm": 1}, alpha=2.0, seed=0)
    rng = np.random.default_rng(3)
    for pair in lora.pairs.values():
        pair.b[:] = 0.2 * rng.standard_normal(pair.b.shape)
    n1, n2 = 5, 7
    ids = rng.integers(0, weights.hparams.n_vocab, size=n1 + n2).astype(np.int32)
    tgt = rng.integers(0, weights.hparams.n_vocab, size=n1 + n2).astype(np.int32)
    graph = Graph(weights, lora, precision="f32")
    packed = Grads.like(lora)
    positions = np.concatenate([np.arange(n1), np.arange(n2)])[None].astype(np.int32)
    first_key = np.concatenate([np.zeros(n1), np.full(n2, n1)])[None].astype(np.int32)
    loss_packed, _ = graph.loss_and_grads(ids[None], tgt[None], packed, positions=positions,
                                          first_key=first_key, loss_scale=1.0)
    separate = Grads.like(lora)
    loss_a, _ = graph.loss_and_grads(ids[None, :n1], tgt[None, :n1], separate, loss_scale=1.0)
    loss_b, _ = graph.loss_and_grads(ids[None, n1:], tgt[None, n1:], separate, loss_scale=1.0)
    assert loss_packed == pytest.approx(loss_a + loss_b, rel=1e-5)
    for name_, g in packed.arrays().items():
        np.testing.assert_allclose(g, separate.arrays()[name_], rtol=1e-4, atol=1e-6, err_msg=name_)


def test_kv_cache_decode_equals_the_full_forward_across_the_window(tmp_path):
    """gemma3's sliding window on the decode path: token-by-token logits through the KV cache
    equal the full sequence's, far past the window (4)."""
    model = load_model(write_case(tmp_path, "gemma3"), precision="f32")
    tokens = np.random.default_rng(2).integers(0, 80, size=14)
    full = model.logits(tokens)
    cache = model.new_cache(len(tokens))
    steps = [model.output_logits(model.hidden(tokens[None, :3], cache))]
    for t in tokens[3:]:
        steps.append(model.output_logits(model.hidden(np.array([[t]]), cache)))
    np.testing.assert_allclose(np.concatenate(steps), full, rtol=0, atol=1e-4 * full.std())


@pytest.mark.parametrize("precision", ["f32", "auto"])
@pytest.mark.parametrize("name", CASES)
def test_the_plan_sizes_exactly_what_a_layer_keeps(tmp_path, name, precision):
    """The memory plan reads Block.kept_layout; a real forward's Saved record must hold exactly that
    (float32 layout with --precision f32, the bf16 compact one otherwise)."""
    weights = read_model_gguf(write_case(tmp_path, name))
    ranks = {"attn_q": 3, "attn_k": 2, "ffn_up": 4, "attn_norm": 1}
    lora = init_lora(weights, ranks, alpha=1.0, seed=0)
    graph = Graph(weights, lora, precision=precision)
    B, S = 2, 5
    x = np.random.default_rng(0).standard_normal((B * S, weights.hparams.n_embd)).astype(np.float32)
    _, saved = graph.block.forward(0, x, Tokens.rows(B, S), keep=True)
    kept = saved.arrays()
    declared = {k: (v.shape, v.dtype) for k, v in graph.block.kept_layout(B, S).items()}
    assert {k: (v.shape, v.dtype) for k, v in kept.items() if not k.startswith("z:")} == declared
    assert (kept["gate"].dtype == BF16) == (precision != "f32")
    assert sum(v.nbytes for v in kept.values()) == layer_intermediates(weights, B, S, ranks, precision)


def test_quantized_family_model_trains_without_nan(tmp_path):
    """A K-quant gemma3 (rows of 256) runs the int8/f32 engines through the whole block."""
    path = write_case(tmp_path, "gemma3", weight_type=T.Q4_K, n_embd=256, n_ff=256, head_dim=64)
    weights = read_model_gguf(path)
    lora = init_lora(weights, {"attn_q": 2, "ffn_up": 2}, alpha=2.0, seed=0)
    grads = Grads.like(lora)
    ids = np.arange(16, dtype=np.int32).reshape(2, 8) % weights.hparams.n_vocab
    loss, n = Graph(weights, lora).loss_and_grads(ids, ids, grads)
    assert np.isfinite(loss / n) and all(np.isfinite(g).all() for g in grads.arrays().values())


END_TO_END = {  # tiny models with a tokenizer and a chat template of the family's kind
    "llama3_rope_freqs": dict(byte_vocab=True, tied=True),
    "qwen2_bias": dict(byte_vocab=True),
    "qwen3_qk_norm_head_dim": dict(byte_vocab=True, tied=True),
    "gemma3": dict(spm_vocab=True),
}
TEXT = ("the license of the licensee is the license of the work, and the licensor grants it. " * 12
        + "to the owner of the copy, in the terms of this license and the notice. " * 10)


@pytest.mark.parametrize("name", END_TO_END)
def test_finetune_resume_adapter_and_merge_on_every_family(tmp_path, name):
    """finetune lowers the loss; a resume continues exactly; the adapter names the model's
    architecture and reproduces the graph's loss at inference; merge folds it into the weights."""
    import ggtune
    from ggtune.adapters import read_gguf_adapter
    from ggtune.gguf_io import open_gguf, read_metadata
    from ggtune.merge import merge

    path = write_case(tmp_path, name, **END_TO_END[name])
    text = tmp_path / "train.txt"
    text.write_text(TEXT, encoding="utf-8")
    common = dict(ctx=16, batch=2, lora_r=2, adam_alpha=2e-2, warmup=0, seed=3, save_every=0, verbose=False,
                  rank_tok_embd=0)  # ggtune applies no token_embd adapter at inference

    def run(out, iterations, checkpoint_in=""):
        return ggtune.finetune(path, str(text), lora_out=str(out / "lora.gguf"), checkpoint_in=checkpoint_in,
                               checkpoint_out=str(out / "ck.gguf"), adam_iter=iterations, **common)

    straight = run(tmp_path / "a", 6)
    assert np.mean(straight.losses[-2:]) < straight.losses[0]
    run(tmp_path / "b", 3)
    resumed = run(tmp_path / "b", 3, checkpoint_in=str(tmp_path / "b" / "ck.gguf"))
    np.testing.assert_allclose(resumed.losses, straight.losses[3:], rtol=0, atol=1e-5)

    adapter = tmp_path / "a" / "lora.gguf"
    arch = read_metadata(open_gguf(path))["general.architecture"]
    assert read_metadata(open_gguf(adapter))["general.architecture"] == arch  # llama.cpp checks it
    alpha, pairs = read_gguf_adapter(adapter)
    tokens = np.array(ggtune.load_model(path).tokenize(TEXT)[:20], dtype=np.int32)
    with_adapter = ggtune.load_model(path, lora=[(str(adapter), 1.0)], precision="f32")
    lora = init_lora(with_adapter.weights, {}, alpha=alpha, seed=0)
    for base, (a, b) in pairs.items():
        lora.add(base, a, b)
    loss, n = Graph(with_adapter.weights, lora, precision="f32").loss_and_grads(tokens[None, :-1], tokens[None, 1:],
                                                                                None)
    assert loss / n == pytest.approx(with_adapter.cross_entropy(tokens), rel=1e-5)
    assert with_adapter.cross_entropy(tokens) != pytest.approx(load_model(path, precision="f32").cross_entropy(tokens))

    merge(path, [(str(adapter), 1.0)], tmp_path / "merged.gguf", outtype="f32")
    merged = load_model(tmp_path / "merged.gguf", precision="f32")
    assert merged.cross_entropy(tokens) == pytest.approx(with_adapter.cross_entropy(tokens), rel=1e-4)


@pytest.mark.parametrize("name", ["gemma3", "qwen2_bias"])
def test_chat_data_trains_with_the_models_template(tmp_path, name):
    import json

    import ggtune

    path = write_case(tmp_path, name, **END_TO_END[name])
    chat = tmp_path / "chat.jsonl"
    chat.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": "the license"},
                                                        {"role": "assistant", "content": "of the work " * 3}]})
                              for _ in range(8)), encoding="utf-8")
    result = ggtune.finetune(path, str(chat), lora_out=str(tmp_path / "lora.gguf"), checkpoint_in="",
                             checkpoint_out="", train_format="chat", ctx=32, batch=2, lora_r=2, adam_iter=4,
                             adam_alpha=2e-2, warmup=0, seed=1, verbose=False)
    assert result.iterations == 4 and result.losses[-1] < result.losses[0]


def test_an_adapter_of_another_architecture_is_refused(tmp_path):
    from ggtune.adapters import AdapterError
    from tiny_models import write_random_adapter

    path = write_case(tmp_path, "qwen2_bias")
    adapter = tmp_path / "llama-adapter.gguf"
    write_random_adapter(adapter, {"blk.0.attn_q.weight": (64, 64)}, rank=2, arch="llama")
    with pytest.raises(AdapterError, match=r"llama-adapter\.gguf: an adapter for general.architecture 'llama', "
                                           r"the model is 'qwen2'"):
        load_model(path, lora=[(str(adapter), 1.0)])


@pytest.mark.parametrize("scaling, factor, expected", [("linear", 4.0, 0.25), ("none", 4.0, 1.0)])
def test_rope_scaling_type_none_never_scales(tmp_path, scaling, factor, expected):
    """As llama.cpp: a factor applies with type linear (the default) or yarn, never with none."""
    path = write_tiny_model(tmp_path / "m.gguf", family_config("qwen2", extra_keys={
        "qwen2.rope.scaling.type": scaling, "qwen2.rope.scaling.factor": factor}))
    assert read_model_gguf(path).hparams.rope_freq_scale == expected


def test_unimplemented_rope_scaling_is_refused(tmp_path):
    path = write_tiny_model(tmp_path / "m.gguf", family_config("llama", extra_keys={
        "llama.rope.scaling.type": "longrope"}))
    with pytest.raises(GGUFError, match=r"llama.rope.scaling.type 'longrope' is not supported \(ggtune "
                                        r"implements none, linear and yarn\)"):
        read_model_gguf(path)
