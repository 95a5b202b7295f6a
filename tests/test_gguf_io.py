"""The GGUF model reader: hyper-parameters, defaults, tied embeddings, weight views, clear errors."""

import os
import subprocess
import sys

import numpy as np
import pytest

import gguf
from gguf import GGMLQuantizationType as T

from ggtune.gguf_io import GGUFError, read_llama_gguf
from reference_model import ReferenceLlama
from tiny_models import write_tiny_llama

K_QUANTS = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]
ALL_TYPES = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0] + K_QUANTS


def tiny(tmp_path, name="m.gguf", **kw):
    return write_tiny_llama(tmp_path / name, **kw)


def test_hparams_read(tmp_path):
    path = tiny(tmp_path, n_embd=64, n_ff=96, n_head=4, n_head_kv=2, n_layer=3, n_ctx=40, n_rot=8,
                freq_base=5000.0, rope_scale_linear=4.0, rms_eps=1e-6)
    hp = read_llama_gguf(path).hparams
    assert (hp.n_vocab, hp.n_ctx_train, hp.n_embd, hp.n_ff) == (80, 40, 64, 96)
    assert (hp.n_head, hp.n_head_kv, hp.n_layer, hp.n_rot, hp.head_dim) == (4, 2, 3, 8, 16)
    assert hp.rope_freq_base == 5000.0 and hp.rope_freq_scale == 0.25
    assert hp.rms_eps == pytest.approx(1e-6)


def test_defaults_for_missing_optional_keys(tmp_path):
    """A converted training checkpoint has no vocab size, KV head count, context or freq base."""
    path = tiny(tmp_path, omit_keys=("vocab_size", "attention.head_count_kv", "context_length",
                                     "rope.freq_base", "rope.dimension_count",
                                     "attention.layer_norm_rms_epsilon"),
                n_head=4, n_head_kv=4)
    hp = read_llama_gguf(path).hparams
    assert hp.n_vocab == 80  # from token_embd's shape
    assert hp.n_head_kv == 4 and hp.n_rot == 16
    assert hp.n_ctx_train == 2048 and hp.rope_freq_base == 10000.0 and hp.rms_eps == 1e-5


def test_old_rope_scale_linear_key(tmp_path):
    path = tiny(tmp_path, extra_keys={"llama.rope.scale_linear": 2.0})
    assert read_llama_gguf(path).hparams.rope_freq_scale == 0.5


def test_tied_and_untied_embeddings(tmp_path):
    tied = read_llama_gguf(tiny(tmp_path, "t.gguf", tied=True))
    assert tied.tied_embeddings and tied.output is tied.token_embd
    assert "output.weight" not in tied.weights_by_name()
    untied = read_llama_gguf(tiny(tmp_path, "u.gguf", tied=False))
    assert not untied.tied_embeddings and "output.weight" in untied.weights_by_name()


@pytest.mark.parametrize("wtype", ALL_TYPES, ids=lambda t: t.name)
def test_weights_are_views_of_the_file_and_decode_like_gguf(tmp_path, wtype):
    big = wtype in K_QUANTS
    path = tiny(tmp_path, weight_type=wtype, n_embd=256 if big else 64, n_ff=512 if big else 96, n_layer=1)
    m = read_llama_gguf(path)
    ref = ReferenceLlama(path)
    for name, w in m.weights_by_name().items():
        assert w.data.dtype == np.uint8 and w.data.shape[0] == w.n_out
        assert isinstance(w.data.base, (np.memmap, np.ndarray)) and not w.data.flags.owndata
        np.testing.assert_array_equal(w.dequantize(), ref.w[name].astype(np.float32), err_msg=name)
    assert m.layers[0].matrices["attn_q"].ggml_type == wtype
    np.testing.assert_array_equal(m.layers[0].norms["attn_norm"], ref.w["blk.0.attn_norm.weight"])


def test_metadata_is_plain_python(tmp_path):
    m = read_llama_gguf(tiny(tmp_path, byte_vocab=True))
    assert m.metadata["tokenizer.ggml.model"] == "gpt2"
    assert isinstance(m.metadata["tokenizer.ggml.tokens"], list)
    assert m.hparams.n_vocab == len(m.metadata["tokenizer.ggml.tokens"])


# ----- errors name the file and the key or tensor -----

def test_missing_file(tmp_path):
    with pytest.raises(GGUFError, match="nope.gguf: no such file"):
        read_llama_gguf(tmp_path / "nope.gguf")


def test_not_gguf(tmp_path):
    path = tmp_path / "text.gguf"
    path.write_text("hello, this is not a model")
    with pytest.raises(GGUFError, match=r"text\.gguf: not a GGUF file"):
        read_llama_gguf(path)


@pytest.mark.parametrize("keep", [0.3, 0.9])
def test_truncated(tmp_path, keep):
    path = tiny(tmp_path)
    data = open(path, "rb").read()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(GGUFError, match=r"cut\.gguf: truncated"):
        read_llama_gguf(cut)


def test_other_architecture(tmp_path):
    path = str(tmp_path / "gpt2.gguf")
    w = gguf.GGUFWriter(path, "gpt2")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with pytest.raises(GGUFError, match=r"gpt2\.gguf: general.architecture is 'gpt2'"):
        read_llama_gguf(path)


def test_adapter_is_not_a_model(tmp_path):
    from tiny_models import write_random_adapter

    path = tmp_path / "a.gguf"
    write_random_adapter(path, {"blk.0.attn_q.weight": (64, 64)}, rank=2)
    with pytest.raises(GGUFError, match="is a LoRA adapter"):
        read_llama_gguf(path)


def test_unsupported_tensor_type(tmp_path):
    path = _retype_first_weight(tmp_path, T.IQ4_NL)
    with pytest.raises(GGUFError, match=r"tensor 'blk\.0\.attn_q\.weight' has unsupported type IQ4_NL"):
        read_llama_gguf(path)


def _retype_first_weight(tmp_path, qtype) -> str:
    """A model whose attn_q holds zero blocks of a type ggtune does not load."""
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    path = str(tmp_path / "retyped.gguf")
    src = gguf.GGUFReader(tiny(tmp_path, n_embd=256, n_ff=256, n_head=4, n_head_kv=4, n_layer=1))
    w = gguf.GGUFWriter(path, "llama")
    for key, f in src.fields.items():
        if not key.startswith("GGUF.") and key != "general.architecture":
            w.add_key_value(key, f.contents(), f.types[0])
    for t in src.tensors:
        if t.name == "blk.0.attn_q.weight":
            rows, cols = int(t.shape[1]), int(t.shape[0])
            w.add_tensor(t.name, np.zeros((rows, cols // block_size * type_size), np.uint8), raw_dtype=qtype)
        else:
            w.add_tensor(t.name, np.asarray(t.data).reshape(tuple(int(n) for n in reversed(t.shape))))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    return path


def test_missing_tensor(tmp_path):
    path = tiny(tmp_path, n_layer=2)
    bad = _rewrite_key(tmp_path, path, "llama.block_count", 3)
    with pytest.raises(GGUFError, match=r"missing tensor 'blk\.2\.attn_norm\.weight'"):
        read_llama_gguf(bad)


def test_wrong_shape(tmp_path):
    path = tiny(tmp_path, n_ff=96)
    bad = _rewrite_key(tmp_path, path, "llama.feed_forward_length", 128)
    with pytest.raises(GGUFError, match=r"bad\.gguf: tensor 'blk\.0\.ffn_gate\.weight' has shape \[64, 96\]"):
        read_llama_gguf(bad)


def test_missing_required_key(tmp_path):
    path = tiny(tmp_path, omit_keys=("feed_forward_length",))
    with pytest.raises(GGUFError, match=r"m\.gguf: missing metadata key 'llama\.feed_forward_length'"):
        read_llama_gguf(path)


def _rewrite_key(tmp_path, path, key, value) -> str:
    """Copy of a GGUF file with one u32 key changed."""
    src = gguf.GGUFReader(path)
    out = str(tmp_path / "bad.gguf")
    w = gguf.GGUFWriter(out, "llama")
    for k, f in src.fields.items():
        if k.startswith("GGUF.") or k == "general.architecture":
            continue
        sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(k, value if k == key else f.contents(), f.types[0], sub)
    for t in src.tensors:
        w.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type if t.data.dtype == np.uint8 else None)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    return out


# ----- the real model -----

RSS_SCRIPT = """
import resource, sys
def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * resource.getpagesize()
import ggtune.gguf_io as io
before = rss()
m = io.read_llama_gguf(sys.argv[1])
print(rss() - before)
"""


def test_smollm2_loads_with_small_resident_memory(smollm2_path):
    """Weights stay quantized views of the map: resident growth < 1.5x the file size."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", RSS_SCRIPT, smollm2_path], capture_output=True, text=True,
                          env=env, check=True)
    delta = int(done.stdout.strip())
    size = os.path.getsize(smollm2_path)
    assert delta < 1.5 * size, f"RSS grew by {delta / 1e6:.0f} MB for a {size / 1e6:.0f} MB file"


def test_smollm2_hparams(smollm2_path):
    m = read_llama_gguf(smollm2_path)
    hp = m.hparams
    assert (hp.n_vocab, hp.n_embd, hp.n_ff, hp.n_head, hp.n_head_kv, hp.n_layer) == (49152, 576, 1536, 9, 3, 30)
    assert hp.n_rot == 64 and hp.rope_freq_base == 100000.0 and hp.n_ctx_train == 8192
    assert m.tied_embeddings
    assert m.layers[0].matrices["attn_q"].ggml_type == T.Q4_1 and m.token_embd.ggml_type == T.Q8_0
