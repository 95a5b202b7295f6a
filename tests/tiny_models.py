"""Writers of tiny random GGUF files for tests: llama models and LoRA adapters.

Any weight type (those gguf.quants cannot quantize, the K-quants, get random blocks
whose scale fields are set to sane values), grouped-query attention or not, tied or untied
embeddings, and optionally a small GPT-2 byte-level vocabulary so a tokenizer can be built.
Everything is deterministic in `seed`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np

import gguf
from gguf import GGMLQuantizationType as T

# Byte offsets and counts of the float16 scale fields (d, dmin) inside each block, for the types
# gguf.quants cannot quantize (ggml-common.h): random bytes elsewhere are valid quants.
_RANDOM_BLOCK_SCALES = {
    T.Q2_K: (80, 2),  # scales[16] qs[64] d dmin
    T.Q3_K: (108, 1),  # hmask[32] qs[64] scales[12] d
    T.Q4_K: (0, 2),  # d dmin scales[12] qs[128]
    T.Q5_K: (0, 2),  # d dmin scales[12] qh[32] qs[128]
    T.Q6_K: (208, 1),  # ql[128] qh[64] scales[16] d
}
# d so that a block's values spread about 0.25 (its largest magnitude about 1).
_RANDOM_BLOCK_D = {T.Q2_K: 1 / 45, T.Q3_K: 1 / 128, T.Q4_K: 1 / 945,
                   T.Q5_K: 1 / 1953, T.Q6_K: 1 / 4096}


@dataclass
class TinyConfig:
    n_embd: int = 64
    n_ff: int = 96
    n_head: int = 4
    n_head_kv: int = 2
    n_layer: int = 2
    n_vocab: int = 80  # replaced by the vocabulary's size when byte_vocab is set
    n_ctx: int = 64
    n_rot: Optional[int] = None  # None: the whole head
    freq_base: float = 10000.0
    rope_scale_linear: float = 1.0  # written as llama.rope.scaling.factor when != 1
    rms_eps: float = 1e-5
    weight_type: int = T.F32  # every linear layer
    embd_type: Optional[int] = None  # token_embd; None: weight_type
    output_type: Optional[int] = None  # output.weight; None: weight_type
    tied: bool = False  # no output.weight: the head reuses token_embd
    byte_vocab: bool = False  # a GPT-2 byte-level vocabulary (tokens, merges, chat template)
    weight_std: Optional[float] = None  # None: 1.5 / sqrt(n_embd), keeps activations of order 1
    omit_keys: tuple = ()  # metadata keys (without "llama.") left out
    extra_keys: dict = field(default_factory=dict)  # more string/int/float metadata
    seed: int = 0


# Shapes (numpy, n_out x n_in) of every tensor of a config, in file order.
def tensor_shapes(cfg: TinyConfig) -> dict[str, tuple[int, ...]]:
    C, F = cfg.n_embd, cfg.n_ff
    D = C // cfg.n_head
    shapes = {"token_embd.weight": (n_vocab(cfg), C), "output_norm.weight": (C,)}
    if not cfg.tied:
        shapes["output.weight"] = (n_vocab(cfg), C)
    for i in range(cfg.n_layer):
        p = f"blk.{i}."
        shapes.update({
            p + "attn_norm.weight": (C,), p + "attn_q.weight": (cfg.n_head * D, C),
            p + "attn_k.weight": (cfg.n_head_kv * D, C), p + "attn_v.weight": (cfg.n_head_kv * D, C),
            p + "attn_output.weight": (C, cfg.n_head * D), p + "ffn_norm.weight": (C,),
            p + "ffn_gate.weight": (F, C), p + "ffn_up.weight": (F, C), p + "ffn_down.weight": (C, F),
        })
    return shapes


def n_vocab(cfg: TinyConfig) -> int:
    return len(byte_vocab()[0]) if cfg.byte_vocab else cfg.n_vocab


def encode_weight(values: np.ndarray, ggml_type: int, rng: np.random.Generator, std: float = 0.25) -> np.ndarray:
    """values f32 [rows, cols] -> the array GGUFWriter stores for that type (raw blocks for quants).

    Types gguf.quants cannot quantize get random blocks of about `std` instead (values only give the shape).
    """
    qtype = T(ggml_type)
    if qtype == T.F32:
        return values.astype(np.float32)
    if qtype == T.F16:
        return values.astype(np.float16)
    if qtype in _RANDOM_BLOCK_SCALES:
        return random_blocks(values.shape, qtype, rng, std)
    return gguf.quants.quantize(values.astype(np.float32), qtype)


def random_blocks(shape: tuple[int, int], qtype: T, rng: np.random.Generator, std: float) -> np.ndarray:
    """uint8 [rows, row_bytes] of random quants whose values have a spread of about `std`."""
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    rows, cols = shape
    blocks = rng.integers(0, 256, size=(rows * cols // block_size, type_size), dtype=np.uint8)
    offset, count = _RANDOM_BLOCK_SCALES[qtype]
    scales = (rng.uniform(0.5, 1.0, size=(blocks.shape[0], count)) * _RANDOM_BLOCK_D[qtype] * std / 0.25).astype(np.float16)
    blocks[:, offset:offset + 2 * count] = scales.view(np.uint8)
    return blocks.reshape(rows, cols // block_size * type_size)


def write_tiny_llama(path: str | os.PathLike, cfg: TinyConfig = TinyConfig(), **overrides) -> str:
    """Writes a random llama GGUF model; keyword overrides replace fields of `cfg`."""
    cfg = replace(cfg, **overrides)
    path = os.fspath(path)
    rng = np.random.default_rng(cfg.seed)
    w = gguf.GGUFWriter(path, "llama")
    w.add_type("model")
    _add_hparams(w, cfg)
    if cfg.byte_vocab:
        _add_byte_vocab(w)
    for name, shape in tensor_shapes(cfg).items():
        if len(shape) == 1:  # norms: around 1, F32 like llama.cpp's converters write them
            w.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32))
            continue
        ggml_type = _type_of(cfg, name)
        std = cfg.weight_std or 1.5 / np.sqrt(cfg.n_embd)
        values = (std * rng.standard_normal(shape)).astype(np.float32)
        data = encode_weight(values, ggml_type, rng, std)
        w.add_tensor(name, data, raw_dtype=T(ggml_type) if data.dtype == np.uint8 else None)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _type_of(cfg: TinyConfig, name: str) -> int:
    if name == "token_embd.weight" and cfg.embd_type is not None:
        return cfg.embd_type
    if name == "output.weight" and cfg.output_type is not None:
        return cfg.output_type
    return cfg.weight_type


def _add_hparams(w: gguf.GGUFWriter, cfg: TinyConfig) -> None:
    head_dim = cfg.n_embd // cfg.n_head
    values = {
        "vocab_size": (w.add_uint32, n_vocab(cfg)),
        "context_length": (w.add_uint32, cfg.n_ctx),
        "embedding_length": (w.add_uint32, cfg.n_embd),
        "feed_forward_length": (w.add_uint32, cfg.n_ff),
        "block_count": (w.add_uint32, cfg.n_layer),
        "attention.head_count": (w.add_uint32, cfg.n_head),
        "attention.head_count_kv": (w.add_uint32, cfg.n_head_kv),
        "rope.dimension_count": (w.add_uint32, cfg.n_rot or head_dim),
        "rope.freq_base": (w.add_float32, cfg.freq_base),
        "attention.layer_norm_rms_epsilon": (w.add_float32, cfg.rms_eps),
    }
    if cfg.rope_scale_linear != 1.0:
        values["rope.scaling.type"] = (w.add_string, "linear")
        values["rope.scaling.factor"] = (w.add_float32, cfg.rope_scale_linear)
    for key, (add, value) in values.items():
        if key not in cfg.omit_keys:
            add(f"llama.{key}", value)
    for key, value in cfg.extra_keys.items():
        adder = {str: w.add_string, int: w.add_uint32, float: w.add_float32}[type(value)]
        adder(key, value)


# A ChatML template like SmolLM2's, short enough to read.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "o n", "Ġ s", "r e", "Ġ w"]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def byte_vocab() -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges): specials, the 256 byte tokens, then one token per merge."""
    tokens = SPECIAL_TOKENS + [_bytes_to_unicode()[b] for b in range(256)]
    tokens += [m.replace(" ", "") for m in MERGES]
    types = [3] * len(SPECIAL_TOKENS) + [1] * (len(tokens) - len(SPECIAL_TOKENS))
    return tokens, types, MERGES


def _add_byte_vocab(w: gguf.GGUFWriter) -> None:
    add_bpe_vocab(w, *byte_vocab())
    w.add_chat_template(CHAT_TEMPLATE)


def add_bpe_vocab(w: gguf.GGUFWriter, tokens: list[str], types: list[int], merges: list[str]) -> None:
    """A GPT-2 byte-level vocabulary (BOS 1, EOS 2, no automatic BOS)."""
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)


def write_random_adapter(path: str | os.PathLike, base_shapes: dict[str, tuple[int, int]], rank: int,
                         alpha: Optional[float] = None, seed: int = 0, std: float = 0.05,
                         tensor_type: int = T.F32) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A GGUF LoRA adapter (spec: gguf-lora-adapter.md) with random A and B for each base weight.

    base_shapes: {base tensor name: (n_out, n_in)}. Returns {name: (A f32 [r, n_in], B f32 [n_out, r])}
    exactly as stored (after rounding to `tensor_type`).
    """
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(os.fspath(path), "llama")
    w.add_type("adapter")
    w.add_string("adapter.type", "lora")
    if alpha is not None:
        w.add_float32("adapter.lora.alpha", float(alpha))
    pairs = {}
    for name, (n_out, n_in) in base_shapes.items():
        a = (std * rng.standard_normal((rank, n_in))).astype(np.float32)
        b = (std * rng.standard_normal((n_out, rank))).astype(np.float32)
        stored = []
        for suffix, m in ((".lora_a", a), (".lora_b", b)):
            data = encode_weight(m, tensor_type, rng)
            w.add_tensor(name + suffix, data, raw_dtype=T(tensor_type) if data.dtype == np.uint8 else None)
            stored.append(_decode(data, tensor_type, m.shape))
        pairs[name] = (stored[0], stored[1])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return pairs


def _decode(data: np.ndarray, ggml_type: int, shape: tuple[int, int]) -> np.ndarray:
    if data.dtype != np.uint8:
        return data.astype(np.float32).reshape(shape)
    return gguf.quants.dequantize(data, T(ggml_type)).astype(np.float32).reshape(shape)


def write_f32_copy(src: str | os.PathLike, dst: str | os.PathLike) -> str:
    """Copies a GGUF model with every tensor dequantized to F32 (by gguf.quants) and all metadata."""
    reader = gguf.GGUFReader(os.fspath(src))
    arch = reader.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(os.fspath(dst), arch)
    for key, f in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type"):
            continue
        sub_type = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(key, f.contents(), f.types[0], sub_type)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    for t in reader.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        w.add_tensor(t.name, values.reshape(tuple(int(n) for n in reversed(t.shape))))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return os.fspath(dst)


# The random adapter of the golden llama.cpp fixtures (scripts/make_model_fixtures.py): rebuilt
# bit-identically by the tests from these parameters and the model's shapes.
FIXTURE_ADAPTER = dict(rank=4, alpha=8.0, seed=1234, std=0.03)
FIXTURE_ADAPTER_TARGETS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def write_fixture_adapter(path: str | os.PathLike, model_path: str | os.PathLike):
    """The golden fixtures' adapter for a model: every layer's attention and FFN matrices."""
    reader = gguf.GGUFReader(os.fspath(model_path))
    shapes = {t.name: (int(t.shape[1]), int(t.shape[0])) for t in reader.tensors
              if t.name.startswith("blk.") and t.name.split(".")[2] in FIXTURE_ADAPTER_TARGETS}
    return write_random_adapter(path, shapes, **FIXTURE_ADAPTER)
