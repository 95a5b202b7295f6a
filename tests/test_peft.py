"""export-peft: the rope row un-permutation, the PEFT names and config, refusals, atomic output."""

import argparse
import json

import gguf
import numpy as np
import pytest
from safetensors.numpy import load_file

from ggtune.peft import (
    add_cli,
    check_adapter_fits,
    export_peft,
    read_model_heads,
    unpermute_rope_rows,
)

N_EMBD, N_FF, N_VOCAB, HEAD_DIM, N_HEAD, N_HEAD_KV = 16, 24, 10, 6, 4, 2


def gguf_permute(w, n_head):
    """convert_hf_to_gguf's LlamaModel.permute: Hugging Face rows -> GGUF rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def base_shapes(n_layer=2):
    """GGUF base name -> numpy (n_out, n_in) of every matrix PEFT can carry."""
    q, kv = N_HEAD * HEAD_DIM, N_HEAD_KV * HEAD_DIM
    shapes = {"output.weight": (N_VOCAB, N_EMBD)}
    for i in range(n_layer):
        shapes |= {f"blk.{i}.attn_q.weight": (q, N_EMBD), f"blk.{i}.attn_k.weight": (kv, N_EMBD),
                   f"blk.{i}.attn_v.weight": (kv, N_EMBD), f"blk.{i}.attn_output.weight": (N_EMBD, q),
                   f"blk.{i}.ffn_gate.weight": (N_FF, N_EMBD), f"blk.{i}.ffn_up.weight": (N_FF, N_EMBD),
                   f"blk.{i}.ffn_down.weight": (N_EMBD, N_FF)}
    return shapes


def random_adapter(rng, shapes, rank=lambda name: 3):
    return {name: (rng.standard_normal((rank(name), n_in)).astype(np.float32),
                   rng.standard_normal((n_out, rank(name))).astype(np.float32))
            for name, (n_out, n_in) in shapes.items()}


def peft_key(module, which):
    return f"base_model.model.{module}.lora_{which}.weight"


@pytest.mark.parametrize("n_head,head_dim", [(1, 2), (3, 6), (4, 64), (9, 64)])
def test_unpermute_inverts_the_gguf_permutation(n_head, head_dim):
    rows = np.random.default_rng(0).standard_normal((n_head * head_dim, 5))
    np.testing.assert_array_equal(unpermute_rope_rows(gguf_permute(rows, n_head), n_head), rows)
    np.testing.assert_array_equal(gguf_permute(unpermute_rope_rows(rows, n_head), n_head), rows)


def test_exported_adapter_applies_to_hugging_face_weights(tmp_path):
    """permute(W_hf + s·B_hf A) == W_gguf + s·B_gguf A for q (n_head) and k (n_head_kv, GQA);
    every other matrix is exported unchanged."""
    rng = np.random.default_rng(1)
    shapes = base_shapes(n_layer=1)
    adapter = random_adapter(rng, shapes)
    alpha = 6.0
    config = export_peft(adapter, alpha, N_HEAD, N_HEAD_KV, tmp_path / "out")
    exported = load_file(tmp_path / "out" / "adapter_model.safetensors")
    scale = alpha / config["r"]
    for name, module, heads in [("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj", N_HEAD),
                                ("blk.0.attn_k.weight", "model.layers.0.self_attn.k_proj", N_HEAD_KV)]:
        w_hf = rng.standard_normal(shapes[name])
        w_gguf = gguf_permute(w_hf, heads)
        a, b_gguf = (x.astype(np.float64) for x in adapter[name])
        a_hf = exported[peft_key(module, "A")].astype(np.float64)
        b_hf = exported[peft_key(module, "B")].astype(np.float64)
        np.testing.assert_allclose(gguf_permute(w_hf + scale * b_hf @ a_hf, heads),
                                   w_gguf + scale * b_gguf @ a, rtol=1e-12, atol=1e-12)
        assert not np.array_equal(b_hf, b_gguf)  # the permutation really moved rows
    for name, module in [("blk.0.attn_v.weight", "model.layers.0.self_attn.v_proj"),
                         ("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj"),
                         ("output.weight", "lm_head")]:
        np.testing.assert_array_equal(exported[peft_key(module, "A")], adapter[name][0])
        np.testing.assert_array_equal(exported[peft_key(module, "B")], adapter[name][1])


def rope_gguf(x, pos, base=10000.0):
    """ggml's normal rope (llama.cpp LLaMA): rotates the adjacent pairs (2i, 2i+1) of a head."""
    d = x.shape[-1]
    theta = pos * base ** (-np.arange(0, d, 2) / d)
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * np.cos(theta) - odd * np.sin(theta)
    out[..., 1::2] = even * np.sin(theta) + odd * np.cos(theta)
    return out


def rope_hf(x, pos, base=10000.0):
    """transformers' LLaMA rope (rotate_half): rotates the pairs (i, i + D/2) of a head."""
    d = x.shape[-1]
    theta = pos * base ** (-np.arange(0, d, 2) / d)
    first, second = x[..., : d // 2], x[..., d // 2:]
    return np.concatenate([first * np.cos(theta) - second * np.sin(theta),
                           second * np.cos(theta) + first * np.sin(theta)], axis=-1)


def test_attention_scores_agree_between_both_conventions(tmp_path):
    """Physical check of the direction: with adapters applied, q·k after rope is the same whether
    computed llama.cpp's way (GGUF rows, adjacent pairs) or transformers' way (exported rows)."""
    rng = np.random.default_rng(2)
    head_dim = 8
    q_rows, k_rows = N_HEAD * head_dim, N_HEAD_KV * head_dim
    adapter = random_adapter(rng, {"blk.0.attn_q.weight": (q_rows, N_EMBD),
                                   "blk.0.attn_k.weight": (k_rows, N_EMBD)})
    export_peft(adapter, 3.0, N_HEAD, N_HEAD_KV, tmp_path / "out")
    exported = load_file(tmp_path / "out" / "adapter_model.safetensors")
    wq_hf, wk_hf = rng.standard_normal((q_rows, N_EMBD)), rng.standard_normal((k_rows, N_EMBD))
    x_q, x_k = rng.standard_normal(N_EMBD), rng.standard_normal(N_EMBD)
    scale = 1.0  # alpha 3 / r 3

    def scores(wq, wk, lora_q, lora_k, rope):
        q = ((wq + scale * lora_q[1] @ lora_q[0]) @ x_q).reshape(N_HEAD, head_dim)
        k = ((wk + scale * lora_k[1] @ lora_k[0]) @ x_k).reshape(N_HEAD_KV, head_dim)
        q, k = rope(q, 5), rope(k, 2)
        return np.array([q[h] @ k[h // (N_HEAD // N_HEAD_KV)] for h in range(N_HEAD)])

    def hf_pair(module):
        return (exported[peft_key(module, "A")].astype(np.float64),
                exported[peft_key(module, "B")].astype(np.float64))

    llama_cpp = scores(gguf_permute(wq_hf, N_HEAD), gguf_permute(wk_hf, N_HEAD_KV),
                       adapter["blk.0.attn_q.weight"], adapter["blk.0.attn_k.weight"], rope_gguf)
    transformers = scores(wq_hf, wk_hf, hf_pair("model.layers.0.self_attn.q_proj"),
                          hf_pair("model.layers.0.self_attn.k_proj"), rope_hf)
    np.testing.assert_allclose(transformers, llama_cpp, rtol=1e-5, atol=1e-5)


def test_names_shapes_and_config(tmp_path):
    rng = np.random.default_rng(3)
    shapes = base_shapes(n_layer=2)
    adapter = random_adapter(rng, shapes)
    out = tmp_path / "peft"
    export_peft(adapter, 8.0, N_HEAD, N_HEAD_KV, out, base_model_name_or_path="HuggingFaceTB/x")
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    tensors = load_file(out / "adapter_model.safetensors")
    modules = ["lm_head"] + [f"model.layers.{i}.{m}" for i in range(2) for m in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
    assert sorted(tensors) == sorted(peft_key(m, w) for m in modules for w in "AB")
    module_of = {"output.weight": "lm_head", "blk.1.ffn_up.weight": "model.layers.1.mlp.up_proj",
                 "blk.1.attn_output.weight": "model.layers.1.self_attn.o_proj"}
    for name, module in module_of.items():
        n_out, n_in = shapes[name]
        assert tensors[peft_key(module, "A")].shape == (3, n_in)
        assert tensors[peft_key(module, "B")].shape == (n_out, 3)
    assert all(t.dtype == np.float32 for t in tensors.values())

    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert config["bias"] == "none" and config["base_model_name_or_path"] == "HuggingFaceTB/x"
    assert (config["r"], config["lora_alpha"]) == (3, 8.0)
    assert config["rank_pattern"] == {} and config["alpha_pattern"] == {}
    assert config["target_modules"] == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                               "up_proj", "down_proj", "lm_head"])


def peft_scale(config, module):
    """How PEFT scales a module: alpha_pattern / rank_pattern entries override lora_alpha / r."""
    alpha = config["alpha_pattern"].get(module, config["lora_alpha"])
    return alpha / config["rank_pattern"].get(module, config["r"])


@pytest.mark.parametrize("alpha", [16.0, None])
def test_per_module_ranks_keep_the_gguf_scale(tmp_path, alpha):
    rng = np.random.default_rng(4)
    shapes = base_shapes(n_layer=1)
    ranks = {"blk.0.attn_q.weight": 8, "output.weight": 2}
    adapter = random_adapter(rng, shapes, rank=lambda name: ranks.get(name, 4))
    config = export_peft(adapter, alpha, N_HEAD, N_HEAD_KV, tmp_path / "o")
    assert config == json.loads((tmp_path / "o" / "adapter_config.json").read_text())
    assert config["r"] == 4
    assert config["rank_pattern"] == {"model.layers.0.self_attn.q_proj": 8, "lm_head": 2}
    for name, module in [("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj"),
                         ("output.weight", "lm_head"), ("blk.0.ffn_up.weight", "model.layers.0.mlp.up_proj")]:
        gguf_scale = 1.0 if alpha is None else alpha / ranks.get(name, 4)
        assert peft_scale(config, module) == pytest.approx(gguf_scale)


@pytest.mark.parametrize("name", ["blk.0.attn_norm.weight", "blk.1.ffn_norm", "output_norm.weight",
                                  "token_embd.weight", "blk.0.attn_qkv.weight", "rope_freqs.weight"])
def test_refuses_what_peft_cannot_carry(tmp_path, name):
    rng = np.random.default_rng(5)
    adapter = random_adapter(rng, base_shapes(n_layer=2))
    adapter[name] = (np.ones((1, N_EMBD), np.float32), np.ones((N_EMBD, 1), np.float32))
    with pytest.raises(ValueError, match=f"'{name}' cannot be exported to PEFT") as info:
        export_peft(adapter, 1.0, N_HEAD, N_HEAD_KV, tmp_path / "o")
    assert "ggtune merge" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_rejects_inconsistent_pairs(tmp_path):
    a, b = np.ones((3, N_EMBD), np.float32), np.ones((N_EMBD, 2), np.float32)
    with pytest.raises(ValueError, match=r"'blk.0.ffn_up.weight'.*same r"):
        export_peft({"blk.0.ffn_up.weight": (a, b)}, 1.0, N_HEAD, N_HEAD_KV, tmp_path / "o")
    b_q = np.ones((N_HEAD * HEAD_DIM + 2, 3), np.float32)  # rows do not split into 4 even heads
    with pytest.raises(ValueError, match=r"'blk.0.attn_q.weight'.*n_head=4"):
        export_peft({"blk.0.attn_q.weight": (a, b_q)}, 1.0, N_HEAD, N_HEAD_KV, tmp_path / "o")
    with pytest.raises(ValueError, match="no tensors"):
        export_peft({}, 1.0, N_HEAD, N_HEAD_KV, tmp_path / "o")
    assert list(tmp_path.iterdir()) == []


def test_directory_is_written_atomically(tmp_path):
    rng = np.random.default_rng(6)
    adapter = random_adapter(rng, base_shapes(n_layer=1))
    empty = tmp_path / "empty"
    empty.mkdir()
    export_peft(adapter, 1.0, N_HEAD, N_HEAD_KV, empty)
    assert len(list(empty.iterdir())) == 2 and empty.stat().st_mode & 0o055  # not left private
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "README.md").write_text("mine")
    (kept / "adapter_config.json").write_text("old")
    export_peft(adapter, 2.0, N_HEAD, N_HEAD_KV, kept)
    assert (kept / "README.md").read_text() == "mine"
    assert json.loads((kept / "adapter_config.json").read_text())["lora_alpha"] == 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "kept"]  # no temporaries
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        export_peft(adapter, 1.0, N_HEAD, N_HEAD_KV, tmp_path / "file")


# ---- the base model side of the command line ----------------------------------------------------

def test_reads_heads_and_shapes_of_smollm2(smollm2_path):
    n_head, n_head_kv, shapes, permuted_qk = read_model_heads(smollm2_path)
    assert (n_head, n_head_kv, permuted_qk) == (9, 3, True)
    assert shapes["blk.0.attn_q.weight"] == (576, 576) and shapes["blk.0.attn_k.weight"] == (576, 192)
    a, b = np.zeros((4, 576)), np.zeros((192, 4))
    check_adapter_fits({"blk.0.attn_k.weight": (a, b)}, shapes, smollm2_path)
    with pytest.raises(ValueError, match="do not fit"):
        check_adapter_fits({"blk.0.attn_v": (a, np.zeros((576, 4)))}, shapes, smollm2_path)
    with pytest.raises(ValueError, match="no base tensor"):
        check_adapter_fits({"output.weight": (a, b)}, shapes, smollm2_path)  # tied embeddings


def write_head_stub(path, arch: str):
    """A GGUF with only what read_model_heads reads: the architecture, a head count, one tensor."""
    writer = gguf.GGUFWriter(path, arch)
    writer.add_uint32(f"{arch}.attention.head_count", 4)
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((8, 8), np.float32))
    for step in (writer.write_header_to_file, writer.write_kv_data_to_file,
                 writer.write_tensors_to_file, writer.close):
        step()
    return path


def test_other_families_keep_their_rows(tmp_path):
    """qwen2/qwen3/gemma3 converters do not permute q/k rows: the export copies B as it is."""
    n_head, n_head_kv, _, permuted_qk = read_model_heads(write_head_stub(tmp_path / "qwen.gguf", "qwen2"))
    assert (n_head, n_head_kv, permuted_qk) == (4, 4, False)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 8)).astype(np.float32), rng.standard_normal((8, 2)).astype(np.float32)
    export_peft({"blk.0.attn_q.weight": (a, b)}, 2.0, 4, 4, tmp_path / "out", permuted_qk=False)
    from safetensors.numpy import load_file
    saved = load_file(str(tmp_path / "out" / "adapter_model.safetensors"))
    np.testing.assert_array_equal(saved["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"], b)


def test_refuses_other_architectures(tmp_path):
    with pytest.raises(ValueError, match="'phi3'.*'llama', 'qwen2', 'qwen3', 'gemma3'"):
        read_model_heads(write_head_stub(tmp_path / "phi.gguf", "phi3"))


def write_gguf_adapter(path, adapter, alpha):
    """A GGUF LoRA adapter as current llama.cpp loads it (spec gguf-lora-adapter.md)."""
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", alpha)
    for name, (a, b) in adapter.items():
        writer.add_tensor(f"{name}.lora_a", a)
        writer.add_tensor(f"{name}.lora_b", b)
    for step in (writer.write_header_to_file, writer.write_kv_data_to_file,
                 writer.write_tensors_to_file, writer.close):
        step()


def test_cli_exports_a_smollm2_adapter(tmp_path, smollm2_path, capsys):
    pytest.importorskip("ggtune.adapters", reason="read_gguf_adapter lands with the train branch")
    rng = np.random.default_rng(7)
    shapes = {"blk.0.attn_q.weight": (576, 576), "blk.0.attn_k.weight": (192, 576),
              "blk.29.ffn_down.weight": (576, 1536)}
    adapter = random_adapter(rng, shapes, rank=lambda name: 4)
    lora = tmp_path / "lora.gguf"
    write_gguf_adapter(lora, adapter, alpha=8.0)
    parser = argparse.ArgumentParser(prog="ggtune")
    add_cli(parser.add_subparsers())
    args = parser.parse_args(["export-peft", "--lora", str(lora), "--model", smollm2_path,
                              "--output", str(tmp_path / "peft")])
    assert args.func(args) == 0
    assert "n_head=9, n_head_kv=3" in capsys.readouterr().out
    exported = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    b_k = exported[peft_key("model.layers.0.self_attn.k_proj", "B")]
    np.testing.assert_array_equal(gguf_permute(b_k, 3), adapter["blk.0.attn_k.weight"][1])
    np.testing.assert_array_equal(exported[peft_key("model.layers.29.mlp.down_proj", "B")],
                                  adapter["blk.29.ffn_down.weight"][1])
