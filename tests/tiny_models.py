"""Writers of tiny random GGUF files for tests: models of every family ggtune reads, and LoRA adapters.

One writer (write_tiny_model) driven by TinyConfig; FAMILIES holds what each architecture's files
carry (llama, qwen2, qwen3, gemma3: biases, per-head q/k norms, sandwich norms, key_length, sliding
windows, Llama 3.1 rope_freqs), with the metadata keys and tensor names and shapes llama.cpp reads.
Any weight type (those gguf.quants cannot quantize, the K-quants, get random blocks whose scale
fields are set to sane values), grouped-query attention or not, tied or untied embeddings, and
optionally a small GPT-2 byte-level or Gemma-style SentencePiece vocabulary so a tokenizer can be
built. Everything is deterministic in `seed`. FIXTURE_CASES are the models of the golden llama.cpp
fixtures (scripts/make_family_fixtures.py).
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
_RANDOM_BLOCK_D = {T.Q2_K: 1 / 21, T.Q3_K: 1 / 128, T.Q4_K: 1 / 70,
                   T.Q5_K: 1 / 77, T.Q6_K: 1 / 4096}
# Types whose blocks subtract dmin * min per sub-block: (quant levels, largest 6- or 4-bit scale). Their
# sub-block scales and mins are chosen so each sub-block is centred on 0, as a real quantizer's are
# (random mins would give every row a large positive mean, which real weights do not have).
_CENTRED_MINS = {T.Q2_K: (4, 10), T.Q4_K: (16, 8), T.Q5_K: (32, 4)}


@dataclass
class TinyConfig:
    arch: str = "llama"  # general.architecture and the prefix of every hyper-parameter key
    n_embd: int = 64
    n_ff: int = 96
    n_head: int = 4
    n_head_kv: int = 2
    n_layer: int = 2
    n_vocab: int = 80  # replaced by the vocabulary's size when byte_vocab or spm_vocab is set
    n_ctx: int = 64
    n_rot: Optional[int] = None  # None: the whole head
    head_dim: Optional[int] = None  # written as attention.key_length/value_length; None: n_embd / n_head, unwritten
    rope_dims_key: bool = True  # write rope.dimension_count (Qwen and Gemma files leave it out)
    freq_base: float = 10000.0
    rope_scale_linear: float = 1.0  # written as rope.scaling.factor (with rope.scaling.type) when != 1
    rope_scaling_type: str = "linear"  # rope.scaling.type written beside the factor: "linear" or "yarn"
    rope_orig_ctx: Optional[int] = None  # rope.scaling.original_context_length
    llama3_rope: Optional[dict] = None  # a rope_freqs.weight tensor from these Llama 3.1 parameters (llama3_rope_factors)
    rms_eps: float = 1e-5
    qkv_bias: bool = False  # attn_q/k/v.bias (qwen2)
    bias_std: float = 0.5
    qk_norm: bool = False  # attn_q_norm/attn_k_norm [head_dim] RMSNorm weights per head (qwen3, gemma3)
    post_norms: bool = False  # post_attention_norm and post_ffw_norm (gemma3's sandwich)
    sliding_window: int = 0  # attention.sliding_window, written when > 0 (gemma3)
    sliding_window_pattern: Optional[int] = None  # attention.sliding_window_pattern (llama.cpp's default: 6)
    freq_base_swa: Optional[float] = None  # rope.freq_base_swa (llama.cpp's default: 10000)
    weight_type: int = T.F32  # every linear layer
    embd_type: Optional[int] = None  # token_embd; None: weight_type
    output_type: Optional[int] = None  # output.weight; None: weight_type
    types: dict = field(default_factory=dict)  # tensor kind ("attn_v", "ffn_down", ...) -> type, over weight_type
    tied: bool = False  # no output.weight: the head reuses token_embd
    byte_vocab: bool = False  # a GPT-2 byte-level vocabulary (tokens, merges, chat template)
    bpe_pre: str = "gpt-2"  # its tokenizer.ggml.pre
    spm_vocab: bool = False  # a Gemma-style SentencePiece vocabulary (spm_vocab())
    weight_std: Optional[float] = None  # None: 1.5 / sqrt(n_embd), keeps activations of order 1
    omit_keys: tuple = ()  # metadata keys (without the "<arch>." prefix) left out
    extra_keys: dict = field(default_factory=dict)  # more string/int/float metadata
    seed: int = 0


# What each family's files carry, as TinyConfig defaults (llama.cpp src/models/<arch>.cpp load_arch_tensors
# and the converters' metadata); family_config() applies them.
FAMILIES: dict[str, dict] = {
    "llama": dict(),
    "qwen2": dict(qkv_bias=True, rope_dims_key=False, bpe_pre="qwen2"),
    "qwen3": dict(qk_norm=True, rope_dims_key=False, bpe_pre="qwen2"),
    "gemma3": dict(qk_norm=True, post_norms=True, rope_dims_key=False, tied=True, rms_eps=1e-6),
}

# Llama 3.1's rope scaling parameters (config.json rope_scaling), with a context short enough that the
# factors of a tiny head vary across its dimensions.
LLAMA31_ROPE = dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=64)


def family_config(arch: str, **overrides) -> TinyConfig:
    """A TinyConfig of family `arch` (a FAMILIES key) with keyword overrides."""
    if arch not in FAMILIES:
        raise ValueError(f"unknown family {arch!r}; known: {', '.join(FAMILIES)}")
    return replace(TinyConfig(arch=arch, **FAMILIES[arch]), **overrides)


def head_dim(cfg: TinyConfig) -> int:
    return cfg.head_dim or cfg.n_embd // cfg.n_head


# Shapes (numpy, n_out x n_in) of every tensor of a config, in file order.
def tensor_shapes(cfg: TinyConfig) -> dict[str, tuple[int, ...]]:
    C, F, D = cfg.n_embd, cfg.n_ff, head_dim(cfg)
    Q, KV = cfg.n_head * D, cfg.n_head_kv * D
    shapes = {"token_embd.weight": (n_vocab(cfg), C), "output_norm.weight": (C,)}
    if not cfg.tied:
        shapes["output.weight"] = (n_vocab(cfg), C)
    if cfg.llama3_rope:
        shapes["rope_freqs.weight"] = ((cfg.n_rot or D) // 2,)
    for i in range(cfg.n_layer):
        p = f"blk.{i}."
        layer = {"attn_norm.weight": (C,), "attn_q.weight": (Q, C), "attn_k.weight": (KV, C), "attn_v.weight": (KV, C)}
        if cfg.qkv_bias:
            layer.update({"attn_q.bias": (Q,), "attn_k.bias": (KV,), "attn_v.bias": (KV,)})
        if cfg.qk_norm:
            layer.update({"attn_q_norm.weight": (D,), "attn_k_norm.weight": (D,)})
        layer["attn_output.weight"] = (C, Q)
        if cfg.post_norms:
            layer["post_attention_norm.weight"] = (C,)
        layer.update({"ffn_norm.weight": (C,), "ffn_gate.weight": (F, C), "ffn_up.weight": (F, C),
                      "ffn_down.weight": (C, F)})
        if cfg.post_norms:
            layer["post_ffw_norm.weight"] = (C,)
        shapes.update({p + name: shape for name, shape in layer.items()})
    return shapes


def n_vocab(cfg: TinyConfig) -> int:
    if cfg.spm_vocab:
        return len(spm_vocab()[0])
    return len(byte_vocab()[0]) if cfg.byte_vocab else cfg.n_vocab


def llama3_rope_factors(n_rot: int, freq_base: float, factor: float, low_freq_factor: float,
                        high_freq_factor: float, original_max_position_embeddings: int) -> np.ndarray:
    """rope_freqs.weight as the converters compute it for Llama 3.1: per dimension pair, the divisor
    of the rotation frequency (1 for short wavelengths, `factor` for long ones, smooth between)."""
    freqs = freq_base ** (-np.arange(0, n_rot, 2) / n_rot)
    wavelen = 2 * np.pi / freqs
    old = original_max_position_embeddings
    smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    between = 1 / ((1 - smooth) / factor + smooth)
    out = np.where(wavelen < old / high_freq_factor, 1.0, np.where(wavelen > old / low_freq_factor, factor, between))
    return out.astype(np.float32)


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
    if qtype in _CENTRED_MINS:
        _centre_mins(blocks, qtype, rng)
    return blocks.reshape(rows, cols // block_size * type_size)


def _centre_mins(blocks: np.ndarray, qtype: T, rng: np.random.Generator) -> None:
    """Rewrites the sub-block scales and mins of K-quant blocks (in place) so that min = scale * mean
    level, with dmin = d: each sub-block's values then spread around 0."""
    levels, top = _CENTRED_MINS[qtype]
    n_sub = 16 if qtype == T.Q2_K else 8
    sc = rng.integers(1, top + 1, size=(blocks.shape[0], n_sub))
    m = np.rint(sc * (levels - 1) / 2).astype(np.int64)
    if qtype == T.Q2_K:  # scales[16] at 0: low nibble scale, high nibble min; d at 80, dmin at 82
        blocks[:, 0:16] = (sc | (m << 4)).astype(np.uint8)
        blocks[:, 82:84] = blocks[:, 80:82]
        return
    # d at 0, dmin at 2, scales[12] at 4 packed as ggml's get_scale_min_k4 reads them
    blocks[:, 2:4] = blocks[:, 0:2]
    q = np.zeros((blocks.shape[0], 12), dtype=np.int64)
    q[:, 0:4] = sc[:, 0:4] | ((sc[:, 4:8] >> 4) << 6)
    q[:, 4:8] = m[:, 0:4] | ((m[:, 4:8] >> 4) << 6)
    q[:, 8:12] = (sc[:, 4:8] & 0xF) | ((m[:, 4:8] & 0xF) << 4)
    blocks[:, 4:16] = q.astype(np.uint8)


def write_tiny_model(path: str | os.PathLike, cfg: TinyConfig = TinyConfig(), **overrides) -> str:
    """Writes a random GGUF model of cfg.arch; keyword overrides replace fields of `cfg`.

    Start from family_config(arch) for another family's tensors and keys."""
    cfg = replace(cfg, **overrides)
    path = os.fspath(path)
    rng = np.random.default_rng(cfg.seed)
    w = gguf.GGUFWriter(path, cfg.arch)
    w.add_type("model")
    _add_hparams(w, cfg)
    if cfg.byte_vocab:
        _add_byte_vocab(w, cfg.bpe_pre)
    if cfg.spm_vocab:
        _add_spm_vocab(w)
    for name, shape in tensor_shapes(cfg).items():
        data, raw_dtype = _tensor_data(cfg, name, shape, rng)
        w.add_tensor(name, data, raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


write_tiny_llama = write_tiny_model  # the name the llama-only tests know


def _tensor_data(cfg: TinyConfig, name: str, shape: tuple[int, ...], rng: np.random.Generator):
    """(array, raw_dtype) GGUFWriter.add_tensor takes for one tensor; 1-D ones are F32 like the converters'."""
    if name == "rope_freqs.weight":
        return llama3_rope_factors(cfg.n_rot or head_dim(cfg), cfg.freq_base, **cfg.llama3_rope), None
    if name.endswith(".bias"):
        return (cfg.bias_std * rng.standard_normal(shape)).astype(np.float32), None
    if len(shape) == 1:  # norms: around 1 (Gemma's files store 1 + weight already)
        return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32), None
    ggml_type = _type_of(cfg, name)
    std = cfg.weight_std or 1.5 / np.sqrt(cfg.n_embd)
    values = (std * rng.standard_normal(shape)).astype(np.float32)
    data = encode_weight(values, ggml_type, rng, std)
    return data, T(ggml_type) if data.dtype == np.uint8 else None


def tensor_kind(name: str) -> str:
    """'blk.3.attn_v.weight' -> 'attn_v'; 'token_embd.weight' -> 'token_embd'."""
    parts = name.split(".")
    return parts[2] if parts[0] == "blk" else parts[0]


def _type_of(cfg: TinyConfig, name: str) -> int:
    kind = tensor_kind(name)
    if kind in cfg.types:
        return cfg.types[kind]
    if kind == "token_embd" and cfg.embd_type is not None:
        return cfg.embd_type
    if kind == "output" and cfg.output_type is not None:
        return cfg.output_type
    return cfg.weight_type


def _add_hparams(w: gguf.GGUFWriter, cfg: TinyConfig) -> None:
    scaled = cfg.rope_scale_linear != 1.0
    values = {  # key: (adder, value or None for "not written")
        "vocab_size": (w.add_uint32, n_vocab(cfg)),
        "context_length": (w.add_uint32, cfg.n_ctx),
        "embedding_length": (w.add_uint32, cfg.n_embd),
        "feed_forward_length": (w.add_uint32, cfg.n_ff),
        "block_count": (w.add_uint32, cfg.n_layer),
        "attention.head_count": (w.add_uint32, cfg.n_head),
        "attention.head_count_kv": (w.add_uint32, cfg.n_head_kv),
        "attention.key_length": (w.add_uint32, cfg.head_dim),
        "attention.value_length": (w.add_uint32, cfg.head_dim),
        "rope.dimension_count": (w.add_uint32, (cfg.n_rot or head_dim(cfg)) if cfg.rope_dims_key else None),
        "rope.freq_base": (w.add_float32, cfg.freq_base),
        "attention.layer_norm_rms_epsilon": (w.add_float32, cfg.rms_eps),
        "rope.scaling.type": (w.add_string, cfg.rope_scaling_type if scaled else None),
        "rope.scaling.factor": (w.add_float32, cfg.rope_scale_linear if scaled else None),
        "rope.scaling.original_context_length": (w.add_uint32, cfg.rope_orig_ctx),
        "attention.sliding_window": (w.add_uint32, cfg.sliding_window or None),
        "attention.sliding_window_pattern": (w.add_uint32, cfg.sliding_window_pattern),
        "rope.freq_base_swa": (w.add_float32, cfg.freq_base_swa),
    }
    for key, (add, value) in values.items():
        if value is not None and key not in cfg.omit_keys:
            add(f"{cfg.arch}.{key}", value)
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


def _add_byte_vocab(w: gguf.GGUFWriter, pre: str = "gpt-2") -> None:
    add_bpe_vocab(w, *byte_vocab(), pre=pre)
    w.add_chat_template(CHAT_TEMPLATE)


def add_bpe_vocab(w: gguf.GGUFWriter, tokens: list[str], types: list[int], merges: list[str],
                  pre: str = "gpt-2") -> None:
    """A GPT-2 byte-level vocabulary (BOS 1, EOS 2, no automatic BOS)."""
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)


# A SentencePiece vocabulary laid out like Gemma 3's GGUF: <pad> <eos> <bos> <unk> first (ids 0-3), the
# turn markers as control tokens, byte-fallback tokens <0x00>..<0xFF>, then scored pieces with "▁"
# for spaces; BOS added, no space prefix (tokenizer.ggml.add_space_prefix false), pre "default".
SPM_SPECIALS = [("<pad>", 3), ("<eos>", 3), ("<bos>", 3), ("<unk>", 2), ("<mask>", 3),
                ("<start_of_turn>", 3), ("<end_of_turn>", 3)]
SPM_MERGED = ["▁t", "th", "▁th", "▁the", "he", "in", "er", "▁a", "on", "re", "an", "▁o", "▁of", "▁s", "at",
              "en", "▁w", "▁c", "or", "is", "▁to", "ed", "▁in", "io", "ion", "nd", "▁an", "▁and", "ar", "▁p",
              "ic", "ce", "▁li", "▁lic", "ens", "▁licens", "▁license", "▁▁", "▁▁▁▁"]
SPM_CHARS = list("abcdefghijklmnopqrstuvwxyzTGNULPV0123456789.,;:!?'\"()-/") + ["▁", "\n"]
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% set role = 'model' if message['role'] == 'assistant' "
    "else message['role'] %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


def spm_vocab() -> tuple[list[str], list[float], list[int]]:
    """(tokens, scores, token types): merged pieces score higher the earlier they are listed."""
    tokens = [t for t, _ in SPM_SPECIALS] + [f"<0x{b:02X}>" for b in range(256)] + SPM_MERGED + SPM_CHARS
    scores = [0.0] * (len(SPM_SPECIALS) + 256) + [-1.0 - i for i in range(len(SPM_MERGED))] + \
        [-100.0] * len(SPM_CHARS)
    types = [t for _, t in SPM_SPECIALS] + [6] * 256 + [1] * (len(SPM_MERGED) + len(SPM_CHARS))
    return tokens, scores, types


def _add_spm_vocab(w: gguf.GGUFWriter) -> None:
    tokens, scores, types = spm_vocab()
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(False)
    w.add_chat_template(GEMMA_CHAT_TEMPLATE)


def write_random_adapter(path: str | os.PathLike, base_shapes: dict[str, tuple[int, int]], rank: int,
                         alpha: Optional[float] = None, seed: int = 0, std: float = 0.05,
                         tensor_type: int = T.F32, arch: str = "llama") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A GGUF LoRA adapter (spec: gguf-lora-adapter.md) with random A and B for each base weight.

    arch: its general.architecture, which llama.cpp requires to be the model's.
    base_shapes: {base tensor name: (n_out, n_in)}. Returns {name: (A f32 [r, n_in], B f32 [n_out, r])}
    exactly as stored (after rounding to `tensor_type`).
    """
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(os.fspath(path), arch)
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
              if t.name.startswith("blk.") and t.name.endswith(".weight") and tensor_kind(t.name) in FIXTURE_ADAPTER_TARGETS}
    arch = reader.fields["general.architecture"].contents()
    return write_random_adapter(path, shapes, arch=arch, **FIXTURE_ADAPTER)


# ----------------------------------------------------------------------------- golden fixtures
# The tiny models of tests/fixtures/model/families.npz (scripts/make_family_fixtures.py), rebuilt
# bit-identically by the tests: every family in F32 and in a quantized mix (like the converters'
# Q4_K_M recipes: K-quants where rows are multiples of 256, Q8_0/Q5_0 elsewhere), plus the rope
# variants. A FIXTURE_TOKENS-token sequence crosses the gemma3 models' sliding windows (6 and 5).
FIXTURE_TOKENS = 32
_QUANT_SIZES = dict(n_embd=256, n_ff=512)
# Without gemma3's sandwich norms these random models amplify llama.cpp's 8-bit rounding of activations
# (mean KL about 2e-3 at the default weight spread); a smaller spread keeps it near 2e-4, well under the
# 1e-3 bound the tests use, while a model that misses a feature still lands far above it.
_CALM = 0.75 / 16
FIXTURE_CASES: dict[str, TinyConfig] = {
    "llama3_f32": family_config("llama", byte_vocab=True, bpe_pre="llama-bpe", llama3_rope=LLAMA31_ROPE,
                                freq_base=500000.0, seed=101),
    "llama3_quant": family_config("llama", byte_vocab=True, bpe_pre="llama-bpe", llama3_rope=LLAMA31_ROPE,
                                  freq_base=500000.0, weight_type=T.Q4_K, weight_std=_CALM, seed=102, **_QUANT_SIZES,
                                  types={"attn_v": T.Q6_K, "ffn_down": T.Q6_K, "token_embd": T.Q8_0, "output": T.Q6_K}),
    "llama_yarn_f32": family_config("llama", byte_vocab=True, rope_scale_linear=4.0, rope_scaling_type="yarn",
                                    rope_orig_ctx=256, seed=103),
    "qwen2_f32": family_config("qwen2", byte_vocab=True, freq_base=1000000.0, seed=201),
    "qwen2_quant": family_config("qwen2", byte_vocab=True, freq_base=1000000.0, weight_type=T.Q4_K, weight_std=_CALM, seed=202,
                                 **_QUANT_SIZES, types={"attn_v": T.Q6_K, "ffn_down": T.Q6_K, "output": T.Q6_K}),
    "qwen3_f32": family_config("qwen3", byte_vocab=True, head_dim=24, freq_base=1000000.0, seed=301),
    "qwen3_quant": family_config("qwen3", byte_vocab=True, head_dim=96, freq_base=1000000.0, tied=True,
                                 weight_type=T.Q4_K, weight_std=_CALM, seed=302, **_QUANT_SIZES,
                                 types={"attn_output": T.Q8_0, "attn_v": T.Q8_0, "token_embd": T.Q8_0}),
    "gemma3_f32": family_config("gemma3", spm_vocab=True, n_layer=6, n_ff=128, head_dim=32, sliding_window=6,
                                freq_base=1000000.0, seed=401),
    "gemma3_quant": family_config("gemma3", spm_vocab=True, n_layer=3, n_head_kv=1, head_dim=128, sliding_window=5,
                                  sliding_window_pattern=3, freq_base=1000000.0, freq_base_swa=20000.0,
                                  weight_type=T.Q5_0, seed=402, **_QUANT_SIZES,
                                  types={"attn_v": T.Q8_0, "attn_output": T.Q4_K, "ffn_down": T.Q6_K,
                                         "token_embd": T.Q8_0}),
}
# The case whose logits are also recorded with the fixture adapter (write_fixture_adapter) applied.
FIXTURE_LORA_CASE = "gemma3_f32"


def fixture_tokens(name: str) -> np.ndarray:
    """The token ids of a fixture case: random ids of its vocabulary, from its seed."""
    cfg = FIXTURE_CASES[name]
    return np.random.default_rng(cfg.seed + 7).integers(0, n_vocab(cfg), FIXTURE_TOKENS).astype(np.int32)


def write_fixture_model(path: str | os.PathLike, name: str) -> str:
    return write_tiny_model(path, FIXTURE_CASES[name])
