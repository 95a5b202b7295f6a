"""Read GGUF models (the families of architecture.py), memory-mapped, weights kept in their stored (quantized) form.

Shapes: numpy order, row-major. A weight with ggml ne = (n_in, n_out) is stored as n_out rows of
n_in elements; here it is a `Weight` whose `data` is a uint8 view [n_out, row_bytes] into the map.
Nothing is dequantized at load time except the small norm vectors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import gguf

from . import _core
from .architecture import Architecture, GGUFError, HParams, family_of, read_hparams  # noqa: F401 (GGUFError: here since the start)
from .names import BIAS_KINDS, ROPE_FREQS, tensor_name

GGUF_MAGIC = b"GGUF"

# ggml type ids of weights ggtune loads: those of csrc/quant/types.h except Q8_1, which llama.cpp
# never stores as a weight and which gguf-py sizes as 40-byte blocks where ggml's are 36 bytes.
SUPPORTED_TYPES = frozenset({0, 1, 2, 3, 6, 7, 8, 10, 11, 12, 13, 14, 30})



def type_name(ggml_type: int) -> str:
    try:
        return gguf.GGMLQuantizationType(ggml_type).name
    except ValueError:
        return f"type {ggml_type}"


def row_bytes(ggml_type: int, n_in: int) -> int:
    """Bytes of one row of n_in elements (n_in a multiple of the block size)."""
    block_size, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)]
    return n_in // block_size * type_size


@dataclass
class Weight:
    """A linear layer's matrix W (n_out, n_in) in its stored form: y = x @ W.T."""

    data: np.ndarray  # uint8 [n_out, row_bytes], usually a view into the file map
    ggml_type: int
    n_out: int
    n_in: int
    name: str = ""

    def dequantize(self) -> np.ndarray:
        """float32 [n_out, n_in]. For tests and small tensors only: never on a whole model."""
        qtype = gguf.GGMLQuantizationType(self.ggml_type)
        if qtype == gguf.GGMLQuantizationType.F32:
            return self.data.view(np.float32).reshape(self.n_out, self.n_in).copy()
        if qtype == gguf.GGMLQuantizationType.F16:
            return self.data.view(np.float16).reshape(self.n_out, self.n_in).astype(np.float32)
        out = np.empty((self.n_out, self.n_in), dtype=np.float32)
        _core.dequantize(np.ascontiguousarray(self.data), self.ggml_type, out)
        return out


@dataclass
class LayerWeights:
    """One block's tensors by kind (names.py): matrices stay in their stored type, vectors are f32."""

    matrices: dict[str, Weight]  # attn_q [Hq*D, C], attn_k/v [Hkv*D, C], attn_output [C, Hq*D], ffn_* [F, C] / [C, F]
    norms: dict[str, np.ndarray]  # attn_norm, ffn_norm [C]; the family's frozen norms (q/k [D], post [C])
    biases: dict[str, np.ndarray] = field(default_factory=dict)  # attn_q/k/v [n_out] (qwen2)


@dataclass
class ModelWeights:
    path: str
    arch: Architecture
    token_embd: Weight  # [V, C]
    output_norm: np.ndarray  # f32 [C]
    output: Weight  # [V, C]; the same object as token_embd when embeddings are tied
    layers: list[LayerWeights]
    metadata: dict[str, Any] = field(repr=False)  # every key/value of the file, as Python values

    @property
    def hparams(self) -> HParams:
        return self.arch.hp

    @property
    def tied_embeddings(self) -> bool:
        return self.output is self.token_embd

    def weights_by_name(self) -> dict[str, Weight]:
        """Every matrix by its GGUF tensor name, e.g. 'blk.3.attn_q.weight'."""
        named = {"token_embd.weight": self.token_embd}
        if not self.tied_embeddings:
            named["output.weight"] = self.output
        for i, layer in enumerate(self.layers):
            for kind, w in layer.matrices.items():
                named[tensor_name(kind, i)] = w
        return named


def open_gguf(path: str | os.PathLike) -> gguf.GGUFReader:
    """A memory-mapped reader, or a GGUFError saying why the file is not a readable GGUF."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise GGUFError(f"{path}: no such file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise GGUFError(f"{path}: not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r})")
    try:
        reader = gguf.GGUFReader(path, "r")
    except Exception as e:  # gguf-py reports damage as ValueError, IndexError, struct or mmap errors...
        raise GGUFError(f"{path}: truncated or corrupt GGUF file ({type(e).__name__}: {e})") from None
    size = os.path.getsize(path)
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size:
            raise GGUFError(f"{path}: truncated GGUF file: tensor '{t.name}' ends at byte "
                            f"{t.data_offset + t.n_bytes}, the file has {size}")
    return reader


def read_metadata(reader: gguf.GGUFReader) -> dict[str, Any]:
    """Every key/value pair as plain Python values (str, int, float, bool, lists of them)."""
    return {key: f.contents() for key, f in reader.fields.items() if not key.startswith("GGUF.")}


class _TensorTable:
    """Looks tensors up by name and checks their type and shape, naming the file and tensor."""

    def __init__(self, path: str, reader: gguf.GGUFReader):
        self.path = path
        self.tensors = {t.name: t for t in reader.tensors}

    def has(self, name: str) -> bool:
        return name in self.tensors

    def _get(self, name: str, shape: tuple[int, ...]):
        t = self.tensors.get(name)
        if t is None:
            raise GGUFError(f"{self.path}: missing tensor '{name}'")
        ne = tuple(int(n) for n in t.shape)  # ggml order: ne0 (fastest) first
        if ne != shape:
            raise GGUFError(f"{self.path}: tensor '{name}' has shape {list(ne)} (ggml order), "
                            f"the hyper-parameters need {list(shape)}")
        if int(t.tensor_type) not in SUPPORTED_TYPES:
            raise GGUFError(f"{self.path}: tensor '{name}' has unsupported type {type_name(t.tensor_type)}")
        return t

    def weight(self, name: str, n_in: int, n_out: int) -> Weight:
        """Matrix with ggml ne (n_in, n_out) as a uint8 [n_out, row_bytes] view of the map."""
        t = self._get(name, (n_in, n_out))
        ggml_type = int(t.tensor_type)
        block_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)][0]
        if n_in % block_size:
            raise GGUFError(f"{self.path}: tensor '{name}' rows of {n_in} are not a multiple of "
                            f"the {type_name(ggml_type)} block size {block_size}")
        data = t.data.view(np.uint8).reshape(n_out, row_bytes(ggml_type, n_in))
        return Weight(data=data, ggml_type=ggml_type, n_out=n_out, n_in=n_in, name=name)

    def vector(self, name: str, n: int) -> np.ndarray:
        """A 1-D tensor (norm weights) as float32 [n]."""
        t = self._get(name, (n,))
        return Weight(t.data.view(np.uint8).reshape(1, -1), int(t.tensor_type), 1, n, name).dequantize()[0]


def read_model_gguf(path: str | os.PathLike) -> ModelWeights:
    """Reads a GGUF model of a supported family (architecture.py); weights stay views of the map."""
    path = os.fspath(path)
    reader = open_gguf(path)
    meta = read_metadata(reader)
    if meta.get("general.type") == "adapter":
        raise GGUFError(f"{path}: is a LoRA adapter (general.type = adapter), not a model")
    table = _TensorTable(path, reader)
    if not table.has("token_embd.weight"):
        raise GGUFError(f"{path}: missing tensor 'token_embd.weight'")
    n_vocab_from_embd = int(table.tensors["token_embd.weight"].shape[-1])
    family = family_of(path, meta)
    hp = read_hparams(path, meta, n_vocab_from_embd)
    rope_freqs = table.vector(ROPE_FREQS, hp.n_rot // 2) if family.rope_freqs and table.has(ROPE_FREQS) else None
    arch = Architecture(family, hp, rope_freqs)
    C = hp.n_embd
    token_embd = table.weight("token_embd.weight", C, hp.n_vocab)
    output = table.weight("output.weight", C, hp.n_vocab) if table.has("output.weight") else token_embd
    layers = [_read_layer(table, arch, i) for i in range(hp.n_layer)]
    return ModelWeights(path=path, arch=arch, token_embd=token_embd,
                        output_norm=table.vector("output_norm.weight", C), output=output,
                        layers=layers, metadata=meta)


read_llama_gguf = read_model_gguf  # the name from when llama was the only family


def _read_layer(table: "_TensorTable", arch: Architecture, i: int) -> LayerWeights:
    hp, family = arch.hp, arch.family
    C, F, Q, KV = hp.n_embd, hp.n_ff, hp.n_embd_q, hp.n_embd_kv
    shapes = {"attn_q": (C, Q), "attn_k": (C, KV), "attn_v": (C, KV), "attn_output": (Q, C),
              "ffn_gate": (C, F), "ffn_up": (C, F), "ffn_down": (F, C)}  # ggml ne (n_in, n_out)
    norm_sizes = {"attn_norm": C, "ffn_norm": C}
    if family.qk_norm:
        norm_sizes.update(attn_q_norm=hp.head_dim, attn_k_norm=hp.head_dim)
    if family.post_norms:
        norm_sizes.update(post_attention_norm=C, post_ffw_norm=C)
    norms = {kind: table.vector(tensor_name(kind, i), n) for kind, n in norm_sizes.items()}
    matrices = {kind: table.weight(tensor_name(kind, i), *ne) for kind, ne in shapes.items()}
    biases = {}
    if family.qkv_bias:
        biases = {kind: table.vector(tensor_name(kind, i, "bias"), shapes[kind][1]) for kind in BIAS_KINDS}
    return LayerWeights(matrices=matrices, norms=norms, biases=biases)
