"""Random-weight GGUF models with the shapes of real ones, for the scale part of bench_finetune.py.

The tensors are streamed to the file one at a time (tensor infos first, then each tensor's random
Q4_0 blocks as it is generated), so writing the 3.8 GB Llama-2-7B shape needs one tensor in memory,
never the model. Q4_0 block: float16 scale d, then 32 four-bit quants q; value = (q - 8) · d.
Random quants are uniform over 0..15 (standard deviation about 4.6·d), so d is set for a weight
standard deviation of 1.5 / sqrt(n_in): activations stay of order 1 through the layers.

The vocabulary is tests/tiny_models.py's GPT-2 byte-level one padded with unused tokens to the
real model's size: any text tokenizes (mostly one token per byte) and the output matmul has the
real [n_vocab, n_embd] shape.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np

import gguf
from gguf import GGMLQuantizationType as T

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))
from tiny_models import TinyConfig, add_bpe_vocab, byte_vocab, tensor_shapes  # noqa: E402

Q4_0_BLOCK, Q4_0_BYTES = gguf.GGML_QUANT_SIZES[T.Q4_0]  # 32 values in 18 bytes
Q4_0_QUANT_STD = float(np.sqrt((16 ** 2 - 1) / 12))  # std of a uniform integer on 0..15


@dataclass(frozen=True)
class Shape:
    name: str
    n_embd: int
    n_ff: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_vocab: int = 32000
    n_ctx: int = 4096


SHAPES = {
    "tinyllama-1.1b": Shape("TinyLlama-1.1B", n_embd=2048, n_ff=5632, n_layer=22, n_head=32, n_head_kv=4,
                            n_ctx=2048),
    "llama-2-7b": Shape("Llama-2-7B", n_embd=4096, n_ff=11008, n_layer=32, n_head=32, n_head_kv=32),
}


def random_q4_0(rows: int, cols: int, std: float, rng: np.random.Generator) -> np.ndarray:
    """uint8 [rows, cols/32·18]: random Q4_0 blocks whose values have a spread of about ``std``."""
    n_blocks = rows * cols // Q4_0_BLOCK
    blocks = rng.integers(0, 256, size=(n_blocks, Q4_0_BYTES), dtype=np.uint8)
    d = (std / Q4_0_QUANT_STD * rng.uniform(0.75, 1.25, size=n_blocks)).astype(np.float16)
    blocks[:, :2] = d.view(np.uint8).reshape(n_blocks, 2)
    return blocks.reshape(rows, cols // Q4_0_BLOCK * Q4_0_BYTES)


def padded_vocab(n_vocab: int) -> tuple[list[str], list[int], list[str]]:
    """The byte-level vocabulary (tokens, types, merges) padded with unused tokens to n_vocab."""
    tokens, types, merges = byte_vocab()
    n_pad = n_vocab - len(tokens)
    return tokens + [f"<unused{i}>" for i in range(n_pad)], types + [gguf.TokenType.UNUSED] * n_pad, merges


def write_random_model(path: str | os.PathLike, shape: Shape, seed: int = 0) -> str:
    """Writes a random Q4_0 llama model of ``shape`` to ``path`` (norms F32 around 1)."""
    path = os.fspath(path)
    cfg = TinyConfig(n_embd=shape.n_embd, n_ff=shape.n_ff, n_head=shape.n_head, n_head_kv=shape.n_head_kv,
                     n_layer=shape.n_layer, n_vocab=shape.n_vocab, n_ctx=shape.n_ctx)
    shapes = tensor_shapes(cfg)  # name -> numpy shape (n_out, n_in), in file order
    w = gguf.GGUFWriter(path, "llama")
    _add_metadata(w, shape)
    for name, dims in shapes.items():
        if len(dims) == 1:
            w.add_tensor_info(name, dims, np.dtype(np.float32), dims[0] * 4)
        else:
            rows, cols = dims
            nbytes = rows * cols // Q4_0_BLOCK * Q4_0_BYTES
            w.add_tensor_info(name, (rows, cols // Q4_0_BLOCK * Q4_0_BYTES), np.dtype(np.uint8), nbytes,
                              raw_dtype=T.Q4_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    for name, dims in shapes.items():
        if len(dims) == 1:
            w.write_tensor_data((1.0 + 0.1 * rng.standard_normal(dims)).astype(np.float32))
        else:
            rows, cols = dims
            w.write_tensor_data(random_q4_0(rows, cols, 1.5 / np.sqrt(cols), rng))
    w.close()
    return path


def _add_metadata(w: gguf.GGUFWriter, shape: Shape) -> None:
    w.add_type("model")
    w.add_name(f"random {shape.name} shape")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    w.add_context_length(shape.n_ctx)
    w.add_embedding_length(shape.n_embd)
    w.add_feed_forward_length(shape.n_ff)
    w.add_block_count(shape.n_layer)
    w.add_head_count(shape.n_head)
    w.add_head_count_kv(shape.n_head_kv)
    w.add_rope_dimension_count(shape.n_embd // shape.n_head)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(shape.n_vocab)
    add_bpe_vocab(w, *padded_vocab(shape.n_vocab))


def random_words_text(n_words: int, seed: int = 0) -> str:
    """Space-separated random lowercase words of 2..9 letters, 12 to a line."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, size=int(rng.integers(2, 10)))) for _ in range(n_words)]
    return "\n".join(" ".join(words[i:i + 12]) for i in range(0, n_words, 12)) + "\n"
