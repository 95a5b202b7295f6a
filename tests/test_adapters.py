import struct

import gguf
import numpy as np
import pytest

from ggtune.adapters import (AdapterError, adapter_capabilities, checkpoint_to_modern, export_adapter,
                             formats_that_carry, read_gguf_adapter, write_ggla_adapter, write_gguf_adapter)

N_EMBD, N_FF, N_VOCAB, N_KV = 8, 12, 11, 4


def checkpoint_lora(rng, ranks):
    """Checkpoint orientation: {base: (A (n_in, r), B (n_out, r))} for a 1-layer toy model."""
    shapes = {"token_embd.weight": (N_VOCAB, N_EMBD), "output_norm.weight": (1, N_EMBD),
              "output.weight": (N_VOCAB, N_EMBD), "blk.0.attn_norm.weight": (1, N_EMBD),
              "blk.0.attn_q.weight": (N_EMBD, N_EMBD), "blk.0.attn_k.weight": (N_KV, N_EMBD),
              "blk.0.ffn_down.weight": (N_EMBD, N_FF), "blk.0.ffn_up.weight": (N_FF, N_EMBD)}
    out = {}
    for base, r in ranks.items():
        n_out, n_in = shapes[base]
        out[base] = (rng.standard_normal((n_in, r)).astype(np.float32),
                     rng.standard_normal((n_out, r)).astype(np.float32))
    return out


MATRICES = {"token_embd.weight": 3, "output.weight": 4, "blk.0.attn_q.weight": 4, "blk.0.attn_k.weight": 2,
            "blk.0.ffn_down.weight": 4, "blk.0.ffn_up.weight": 5}


def test_capabilities():
    gguf_untied = adapter_capabilities("gguf", tied_embeddings=False)
    assert {"attn_q", "ffn_up", "token_embd", "output"} <= gguf_untied
    assert not gguf_untied & {"attn_norm", "ffn_norm", "output_norm"}
    gguf_tied = adapter_capabilities("gguf", tied_embeddings=True)
    assert "token_embd" not in gguf_tied and "output" not in gguf_tied and "attn_v" in gguf_tied
    assert adapter_capabilities("ggla", tied_embeddings=True) == frozenset(
        {"token_embd", "output_norm", "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm",
         "ffn_gate", "ffn_down", "ffn_up"})
    assert formats_that_carry("attn_norm", False) == ["ggla"]
    with pytest.raises(AdapterError, match="format"):
        adapter_capabilities("safetensors", False)


def test_orientations_give_the_same_effective_weight():
    rng = np.random.default_rng(0)
    lora_ck = checkpoint_lora(rng, MATRICES)
    modern = checkpoint_to_modern(lora_ck)
    for base, (a_ck, b_ck) in lora_ck.items():
        a, b = modern[base]
        r = a_ck.shape[1]
        assert a.shape == (r, a_ck.shape[0]) and b.shape == b_ck.shape
        w = rng.standard_normal((b_ck.shape[0], a_ck.shape[0]))
        scale = 8 / r
        want = w + scale * (b_ck.astype(np.float64) @ a_ck.astype(np.float64).T)
        np.testing.assert_allclose(w + scale * (b.astype(np.float64) @ a), want, rtol=0, atol=1e-12)


def test_gguf_round_trip_and_file_layout(tmp_path):
    rng = np.random.default_rng(1)
    modern = checkpoint_to_modern(checkpoint_lora(rng, MATRICES))
    path = tmp_path / "lora.gguf"
    write_gguf_adapter(path, modern, alpha=8.0)
    alpha, back = read_gguf_adapter(path)
    assert alpha == 8.0 and back.keys() == modern.keys()
    for base in modern:
        np.testing.assert_array_equal(back[base][0], modern[base][0])
        np.testing.assert_array_equal(back[base][1], modern[base][1])

    r = gguf.GGUFReader(path)
    assert bytes(r.fields["general.type"].parts[-1]) == b"adapter"
    assert bytes(r.fields["adapter.type"].parts[-1]) == b"lora"
    assert bytes(r.fields["general.architecture"].parts[-1]) == b"llama"
    assert r.fields["adapter.lora.alpha"].types[0] == gguf.GGUFValueType.FLOAT32
    ne = {t.name: [int(x) for x in t.shape] for t in r.tensors}
    # ordinary matrices: lora_a ne (n_in, r), lora_b ne (r, n_out) -- llama.cpp's shape checks
    assert ne["blk.0.attn_k.weight.lora_a"] == [N_EMBD, 2] and ne["blk.0.attn_k.weight.lora_b"] == [2, N_KV]
    assert ne["blk.0.ffn_down.weight.lora_a"] == [N_FF, 4] and ne["blk.0.ffn_down.weight.lora_b"] == [4, N_EMBD]
    # token_embd: lora_a ne (r, n_vocab), lora_b ne (r, n_embd)
    assert ne["token_embd.weight.lora_a"] == [3, N_VOCAB] and ne["token_embd.weight.lora_b"] == [3, N_EMBD]
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in r.tensors)


def test_token_embd_file_tensors_match_llama_cpp_lookup(tmp_path):
    """llama.cpp adds scale * mul_mat(lora_b, get_rows(lora_a, tokens)) to the embeddings:
    row t of the delta is lora_a[t] @ lora_b.T in numpy terms. It must equal row t of B @ A."""
    rng = np.random.default_rng(2)
    a_ck, b_ck = checkpoint_lora(rng, {"token_embd.weight": 3})["token_embd.weight"]
    a, b = checkpoint_to_modern({"token_embd.weight": (a_ck, b_ck)})["token_embd.weight"]
    path = tmp_path / "e.gguf"
    write_gguf_adapter(path, {"token_embd.weight": (a, b)}, alpha=3.0)
    tensors = {t.name: np.array(t.data) for t in gguf.GGUFReader(path).tensors}
    file_a, file_b = tensors["token_embd.weight.lora_a"], tensors["token_embd.weight.lora_b"]
    tokens = [0, 5, 10, 5]
    delta_llama = np.stack([file_a[t].astype(np.float64) @ file_b.T.astype(np.float64) for t in tokens])
    delta_ckpt = (b_ck.astype(np.float64) @ a_ck.astype(np.float64).T)[tokens]
    np.testing.assert_allclose(delta_llama, delta_ckpt, atol=1e-12)


def test_export_dispatches_on_format(tmp_path):
    lora_ck = checkpoint_lora(np.random.default_rng(5), {"blk.0.attn_q.weight": 4})
    export_adapter(tmp_path / "x.gguf", lora_ck, fmt="gguf", alpha=8, lora_r=4, tied_embeddings=True)
    alpha, back = read_gguf_adapter(tmp_path / "x.gguf")
    a_ck, b_ck = lora_ck["blk.0.attn_q.weight"]
    assert alpha == 8.0
    np.testing.assert_array_equal(back["blk.0.attn_q.weight"][0], a_ck.T)
    export_adapter(tmp_path / "x.ggla", lora_ck, fmt="ggla", alpha=8, lora_r=4, tied_embeddings=True)
    assert struct.unpack("<4I", (tmp_path / "x.ggla").read_bytes()[:16]) == (0x67676C61, 1, 4, 8)
    with pytest.raises(AdapterError, match="format"):
        export_adapter(tmp_path / "x.bin", lora_ck, fmt="bin", alpha=8, lora_r=4, tied_embeddings=True)


def test_gguf_refuses_what_it_cannot_carry(tmp_path):
    rng = np.random.default_rng(3)
    norm = checkpoint_to_modern(checkpoint_lora(rng, {"blk.0.attn_norm.weight": 1}))
    with pytest.raises(AdapterError, match=r"cannot carry blk.0.attn_norm.weight .*--lora-format ggla"):
        write_gguf_adapter(tmp_path / "n.gguf", norm, alpha=1.0)
    embd = checkpoint_to_modern(checkpoint_lora(rng, {"token_embd.weight": 2}))
    with pytest.raises(AdapterError, match="cannot carry token_embd.weight.*--lora-format ggla"):
        write_gguf_adapter(tmp_path / "t.gguf", embd, alpha=1.0, tied_embeddings=True)
    with pytest.raises(AdapterError, match="are not a pair"):
        write_gguf_adapter(tmp_path / "p.gguf", {"blk.0.attn_q.weight": (np.zeros((2, 8)), np.zeros((8, 3)))},
                           alpha=1.0)
    assert not list(tmp_path.iterdir())


def write_raw_gguf(path, tensors, *, general_type="adapter", alpha=("f32", 4.0)):
    w = gguf.GGUFWriter(path, "llama")
    if general_type:
        w.add_type(general_type)
    w.add_string("adapter.type", "lora")
    if alpha:
        {"f32": w.add_float32, "u32": w.add_uint32}[alpha[0]]("adapter.lora.alpha", alpha[1])
    for name, data in tensors.items():
        w.add_tensor(name, data)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()


def test_reader_errors(tmp_path, smollm2_path):
    a, b = np.ones((2, 8), np.float32), np.ones((4, 2), np.float32)
    with pytest.raises(AdapterError, match=r"not a LoRA adapter \(general.type is 'model'"):
        read_gguf_adapter(smollm2_path)
    write_raw_gguf(tmp_path / "half.gguf", {"blk.0.attn_q.weight.lora_a": a})
    with pytest.raises(AdapterError, match=r"half.gguf: blk.0.attn_q.weight has no lora_b"):
        read_gguf_adapter(tmp_path / "half.gguf")
    write_raw_gguf(tmp_path / "mismatch.gguf", {"blk.0.attn_q.weight.lora_a": a,
                                                "blk.0.attn_q.weight.lora_b": np.ones((4, 3), np.float32)})
    with pytest.raises(AdapterError, match=r"mismatch.gguf: .*not a pair"):
        read_gguf_adapter(tmp_path / "mismatch.gguf")
    write_raw_gguf(tmp_path / "u32.gguf", {}, alpha=("u32", 4))
    with pytest.raises(AdapterError, match="alpha is UINT32"):
        read_gguf_adapter(tmp_path / "u32.gguf")
    write_raw_gguf(tmp_path / "noalpha.gguf", {"blk.0.attn_q.weight.lora_a": a, "blk.0.attn_q.weight.lora_b": b},
                   alpha=None)
    alpha, lora = read_gguf_adapter(tmp_path / "noalpha.gguf")
    assert alpha is None and lora["blk.0.attn_q.weight"][0].shape == (2, 8)
    (tmp_path / "cut.gguf").write_bytes((tmp_path / "noalpha.gguf").read_bytes()[:100])
    with pytest.raises(AdapterError, match="cut.gguf: truncated or corrupt GGUF"):
        read_gguf_adapter(tmp_path / "cut.gguf")
    with pytest.raises(AdapterError, match="none.gguf: no such adapter file"):
        read_gguf_adapter(tmp_path / "none.gguf")


def test_reader_accepts_f16_tensors(tmp_path):
    a, b = np.full((2, 8), 0.5, np.float16), np.full((4, 2), -2.0, np.float16)
    write_raw_gguf(tmp_path / "h.gguf", {"blk.0.attn_q.weight.lora_a": a, "blk.0.attn_q.weight.lora_b": b})
    _, lora = read_gguf_adapter(tmp_path / "h.gguf")
    assert lora["blk.0.attn_q.weight"][0].dtype == np.float32
    np.testing.assert_array_equal(lora["blk.0.attn_q.weight"][1], b.astype(np.float32))


def expected_ggla_record(name, ne, values, offset):
    """Section E by hand: n_dims, name length, type 0, ne..., name, zeros to a 32-byte offset, data."""
    head = struct.pack("<III", len(ne), len(name), 0) + struct.pack(f"<{len(ne)}I", *ne) + name.encode()
    pad = (32 - (offset + len(head)) % 32) % 32
    return head + b"\0" * pad + np.asarray(values, "<f4").tobytes()


def test_ggla_bytes_by_hand(tmp_path):
    q_a = np.arange(16, dtype=np.float32).reshape(8, 2)  # A_ck (n_in=8, r=2)
    q_b = -np.arange(8, dtype=np.float32).reshape(4, 2)  # B_ck (n_out=4, r=2)
    n_a = np.linspace(0, 1, 8, dtype=np.float32).reshape(8, 1)  # norm A_ck (n_embd, r=1)
    n_b = np.array([[3.0]], np.float32)  # norm B_ck (1, 1): ggml ne [1, 1] has one dim
    path = tmp_path / "a.ggla"
    # lora_r = 2, alpha = 4: the rank-2 tensor uses the header scale 2; the rank-1 norm was trained
    # with scale 4 / 1 = 4, so its loraB carries the factor 2
    write_ggla_adapter(path, {"blk.0.attn_q.weight": (q_a, q_b), "output_norm.weight": (n_a, n_b)},
                       alpha=4, lora_r=2)
    want = struct.pack("<4I", 0x67676C61, 1, 2, 4)
    for name, ne, values in (("output_norm.weight.loraA", [1, 8], n_a), ("output_norm.weight.loraB", [1], n_b * 2),
                             ("blk.0.attn_q.weight.loraA", [2, 8], q_a), ("blk.0.attn_q.weight.loraB", [2, 4], q_b)):
        want += expected_ggla_record(name, ne, values, len(want))
    assert path.read_bytes() == want


def test_ggla_non_integer_alpha_folds_into_b(tmp_path):
    a, b = np.ones((8, 2), np.float32), np.ones((4, 2), np.float32)
    path = tmp_path / "f.ggla"
    write_ggla_adapter(path, {"blk.0.attn_q.weight": (a, b)}, alpha=3.0, lora_r=2)
    assert struct.unpack("<4I", path.read_bytes()[:16]) == (0x67676C61, 1, 2, 3)
    write_ggla_adapter(path, {"blk.0.attn_q.weight": (a, b)}, alpha=2.5, lora_r=2)
    raw = path.read_bytes()
    assert struct.unpack("<4I", raw[:16]) == (0x67676C61, 1, 2, 2)  # header scale 1
    b_data = np.frombuffer(raw[-32:], "<f4")  # loraB is the last tensor: 4*2 floats
    np.testing.assert_allclose(b_data, 1.25)  # trained scale 2.5 / 2 folded in


def test_llama_cpp_loads_the_gguf_adapter(tmp_path, smollm2_path):
    """Current llama.cpp accepts the file (its loader checks every shape and the pairing): a zero-B
    adapter leaves the logits bit-identical, a random one moves them."""
    llama_cpp = pytest.importorskip("llama_cpp")
    ne = {t.name: [int(x) for x in t.shape] for t in gguf.GGUFReader(smollm2_path).tensors}
    rng = np.random.default_rng(4)
    kinds = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_down", "ffn_up")
    bases = [n for n in ne if n.startswith("blk.") and n.split(".")[2] in kinds]
    pairs = {n: (0.05 * rng.standard_normal((4, ne[n][0])).astype(np.float32),
                 0.05 * rng.standard_normal((ne[n][1], 4)).astype(np.float32)) for n in bases}
    zero = {n: (a, np.zeros_like(b)) for n, (a, b) in pairs.items()}
    write_gguf_adapter(tmp_path / "zero.gguf", zero, alpha=4.0, tied_embeddings=True)
    write_gguf_adapter(tmp_path / "rand.gguf", pairs, alpha=4.0, tied_embeddings=True)

    def logits(lora_path=None):
        kw = {"lora_path": str(lora_path)} if lora_path else {}
        model = llama_cpp.Llama(model_path=smollm2_path, n_ctx=32, logits_all=True, verbose=False, n_threads=2, **kw)
        tokens = model.tokenize(b"The quick brown fox jumps over the lazy dog.")
        model.eval(tokens)
        return np.array(model.scores[: len(tokens)])

    base = logits()
    assert np.array_equal(logits(tmp_path / "zero.gguf"), base)
    assert np.abs(logits(tmp_path / "rand.gguf") - base).max() > 0.1
