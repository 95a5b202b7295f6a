"""LoRA adapter files: the GGUF adapter current llama.cpp loads, and the original's old ggla file.

Specs: gguf-lora-adapter.md and original-finetune.md section E.

Two orientations of one adapter on a base weight W, numpy (n_out, n_in):
- checkpoint (the original's, used in training; see checkpoint.py):
    A_ck (n_in, r), B_ck (n_out, r);          W_eff = W + scale · B_ck @ A_ck.T
- modern (PEFT's, used by this module's GGUF functions):
    A (r, n_in), B (n_out, r);                W_eff = W + scale · B @ A
  so A = A_ck.T and B = B_ck (:func:`checkpoint_to_modern`).
scale = alpha / r with each tensor's own rank r, in training and in llama.cpp alike.

token_embd (W numpy (n_vocab, n_embd)) follows the same modern convention here, A (r, n_embd) and
B (n_vocab, r); llama.cpp stores it flipped (it gathers rows of lora_a), so the GGUF file holds
lora_a = B (n_vocab, r) and lora_b = A.T (n_embd, r). The writer and reader do that swap.
"""

from __future__ import annotations

import os
import struct

import numpy as np

from .atomic import atomic_path
from .finite import require_finite, require_finite_value
from .names import ALL_KINDS, NORM_KINDS, checkpoint_order, kind_of
from .optim import ggml_n_dims

FORMATS = ("gguf", "ggla")
GGLA_MAGIC = 0x67676C61
GGLA_ALIGNMENT = 32


class AdapterError(ValueError):
    """An adapter that cannot be written or read; the message names the file or the tensor."""


# ---- what a format can carry ---------------------------------------------------------------------

def adapter_capabilities(fmt: str, tied_embeddings: bool) -> frozenset[str]:
    """The tensor kinds (names.ALL_KINDS) an adapter in ``fmt`` can carry for a
    model with or without tied embeddings (no output.weight).

    gguf: llama.cpp ignores norm adapters, and aborts on a token_embd adapter of a tied model;
    output exists only on untied models. ggla: every kind the model has."""
    if fmt not in FORMATS:
        raise AdapterError(f"adapter format: expected one of {FORMATS}, got {fmt!r}")
    kinds = set(ALL_KINDS)
    if tied_embeddings:
        kinds.discard("output")
    if fmt == "gguf":
        kinds -= set(NORM_KINDS)
        if tied_embeddings:
            kinds.discard("token_embd")
    return frozenset(kinds)


def formats_that_carry(kind: str, tied_embeddings: bool) -> list[str]:
    """Formats able to carry ``kind``, for messages that point the user to one."""
    return [fmt for fmt in FORMATS if kind in adapter_capabilities(fmt, tied_embeddings)]


# ---- orientation ---------------------------------------------------------------------------------

def checkpoint_to_modern(lora: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{base: (A_ck (n_in, r), B_ck (n_out, r))} -> {base: (A (r, n_in), B (n_out, r))};
    B @ A equals B_ck @ A_ck.T exactly (a transpose, no arithmetic)."""
    return {base: (np.ascontiguousarray(a.T, np.float32), np.ascontiguousarray(b, np.float32))
            for base, (a, b) in lora.items()}


def _check_pair(base: str, a: np.ndarray, b: np.ndarray) -> int:
    """Rank of a modern pair A (r, n_in), B (n_out, r); rank 0 is refused (its scale alpha / r
    has no value)."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
        raise AdapterError(f"adapter tensor {base}: A {a.shape} and B {b.shape} are not a pair "
                           "A (r, n_in), B (n_out, r)")
    if a.shape[0] == 0:
        raise AdapterError(f"adapter tensor {base}: rank 0 (A {a.shape}, B {b.shape}); an adapter needs rank >= 1")
    return a.shape[0]


def _refuse_non_finite(path, lora: dict[str, tuple[np.ndarray, np.ndarray]], alpha: float) -> None:
    """A diverged training must never produce an adapter file of NaNs."""
    require_finite_value(float(alpha), f"{os.fspath(path)}: not written: alpha", AdapterError)
    require_finite(((f"{base}.{half}", t) for base, pair in lora.items() for half, t in zip(("lora_a", "lora_b"), pair)),
                   f"{os.fspath(path)}: not written", AdapterError)


# ---- GGUF adapter --------------------------------------------------------------------------------

def write_gguf_adapter(path: str | os.PathLike, lora: dict[str, tuple[np.ndarray, np.ndarray]], *,
                       alpha: float, architecture: str = "llama", tied_embeddings: bool = False,
                       metadata: dict[str, bool | float] | None = None) -> None:
    """Writes the GGUF LoRA adapter of current llama.cpp, atomically, F32.

    ``lora`` is {base name "blk.0.attn_q.weight": (A (r, n_in), B (n_out, r))} (modern
    orientation). A tensor kind the format cannot carry is refused, never dropped silently.
    ``metadata``: further keys for readers that know them (bool or float32; llama.cpp ignores them)."""
    import gguf

    carried = adapter_capabilities("gguf", tied_embeddings)
    for base, (a, b) in lora.items():
        kind = kind_of(base)
        if kind not in carried:
            other = [f for f in formats_that_carry(kind, tied_embeddings) if f != "gguf"]
            hint = f"; write --lora-format {other[0]} instead" if other else ""
            why = "llama.cpp ignores norm adapters" if kind in NORM_KINDS else "llama.cpp cannot apply it to this model"
            raise AdapterError(f"{os.fspath(path)}: the GGUF LoRA adapter cannot carry {base} ({why}){hint}")
        _check_pair(base, a, b)
    _refuse_non_finite(path, lora, alpha)
    with atomic_path(path) as tmp:
        w = gguf.GGUFWriter(tmp, architecture)
        w.add_type("adapter")
        w.add_string("adapter.type", "lora")
        w.add_float32("adapter.lora.alpha", float(alpha))
        for key, value in (metadata or {}).items():
            w.add_bool(key, value) if isinstance(value, bool) else w.add_float32(key, float(value))
        for base in checkpoint_order(lora):
            a, b = lora[base]
            if kind_of(base) == "token_embd":  # llama.cpp gathers rows of lora_a: flipped pair
                a, b = b, a.T
            w.add_tensor(f"{base}.lora_a", np.ascontiguousarray(a, np.float32))
            w.add_tensor(f"{base}.lora_b", np.ascontiguousarray(b, np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()


def read_gguf_adapter(path: str | os.PathLike, architecture: str | None = None
                      ) -> tuple[float | None, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """(alpha or None when absent, {base name: (A (r, n_in), B (n_out, r))}) of a GGUF LoRA adapter;
    tensors of any type gguf can dequantize come back as float32. With `architecture` (the base
    model's), the adapter's general.architecture must be the same, as llama.cpp requires.

    Refused, naming the file (and tensor): a damaged file (gguf_io.validate_tensor_table), NaN or
    infinite values or alpha, a pair of rank 0. alpha 0 means "no alpha", as in llama.cpp."""
    import gguf

    from .gguf_io import GGUFError, open_gguf

    name = os.fspath(path)
    if not os.path.isfile(name):
        raise AdapterError(f"{name}: no such adapter file")
    try:
        reader = open_gguf(name)
    except GGUFError as e:
        raise AdapterError(str(e)) from None
    fields = reader.fields
    for key, want in (("general.type", "adapter"), ("adapter.type", "lora")):
        got = _string_field(fields, key)
        if got != want:
            raise AdapterError(f"{name}: not a LoRA adapter ({key} is {got!r}, expected {want!r})")
    own = _string_field(fields, "general.architecture")
    if architecture is not None and own != architecture:
        raise AdapterError(f"{name}: an adapter for general.architecture {own!r}, the model is {architecture!r}")
    raw = {t.name: _as_float32(t, name) for t in reader.tensors}
    require_finite(raw.items(), name, AdapterError)
    alpha = None
    if "adapter.lora.alpha" in fields:
        f = fields["adapter.lora.alpha"]
        if not f.types or f.types[0] != gguf.GGUFValueType.FLOAT32:
            raise AdapterError(f"{name}: adapter.lora.alpha is {f.types[0].name if f.types else 'empty'}, llama.cpp requires FLOAT32")
        alpha = float(f.parts[f.data[0]][0])
        require_finite_value(alpha, f"{name}: adapter.lora.alpha", AdapterError)
        alpha = alpha or None  # llama.cpp: alpha 0 applies the user scale alone
    return alpha, _pairs(name, raw)


def _as_float32(tensor, source: str) -> np.ndarray:
    import gguf
    from gguf.quants import dequantize

    if tensor.tensor_type == gguf.GGMLQuantizationType.F32:
        return np.array(tensor.data, np.float32)
    try:
        return np.asarray(dequantize(tensor.data, tensor.tensor_type), np.float32)
    except (NotImplementedError, ValueError):
        raise AdapterError(f"{source}: tensor {tensor.name!r}: ggml type {tensor.tensor_type.name} "
                           "cannot be read") from None


def _string_field(fields, key):
    f = fields.get(key)
    if f is None or not f.data:
        return None
    return bytes(f.parts[f.data[0]]).decode("utf-8", "replace")


def _pairs(name: str, raw: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    halves: dict[str, dict[str, np.ndarray]] = {}
    for tensor_name, data in raw.items():
        base, _, half = tensor_name.rpartition(".")
        if half not in ("lora_a", "lora_b"):
            raise AdapterError(f"{name}: tensor {tensor_name!r} is not a .lora_a or .lora_b tensor")
        halves.setdefault(base, {})[half] = data
    lora = {}
    for base, pair in halves.items():
        missing = {"lora_a", "lora_b"} - pair.keys()
        if missing:
            raise AdapterError(f"{name}: {base} has no {missing.pop()} (each adapter needs both halves)")
        a, b = pair["lora_a"], pair["lora_b"]
        if kind_of(base) == "token_embd":
            if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
                raise AdapterError(f"{name}: {base} lora_a {a.shape} and lora_b {b.shape} ranks differ")
            a, b = np.ascontiguousarray(b.T), a
        try:
            _check_pair(base, a, b)
        except AdapterError as e:
            raise AdapterError(f"{name}: {e}") from None
        lora[base] = (a, b)
    return lora


# ---- ggla (the original's format) ----------------------------------------------------------------

def write_ggla_adapter(path: str | os.PathLike, lora: dict[str, tuple[np.ndarray, np.ndarray]], *,
                       alpha: float, lora_r: int) -> None:
    """Writes the old ggla file from checkpoint-orientation tensors {base: (A_ck (n_in, r), B_ck (n_out, r))},
    atomically, in section D's order, as ``<base>.loraA`` (ne [r, n_in]) / ``<base>.loraB`` (ne [r, n_out]).

    Old llama.cpp applied one scale, header lora_alpha / header lora_r, to every tensor, and both
    header fields are u32. The header holds (lora_r, alpha) when alpha is a positive integer, else
    (lora_r, lora_r); a tensor whose training scale alpha / r differs from the header's scale has
    the ratio folded into its loraB, so the file applies exactly what was trained."""
    if lora_r <= 0:
        raise AdapterError(f"lora_r: expected a positive rank, got {lora_r}")
    _refuse_non_finite(path, lora, alpha)
    header_alpha = int(alpha) if float(alpha).is_integer() and alpha > 0 else lora_r
    header_scale = header_alpha / lora_r
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<4I", GGLA_MAGIC, 1, lora_r, header_alpha))
        for base in checkpoint_order(lora):
            a, b = lora[base]
            r = a.shape[1]
            if a.ndim != 2 or b.ndim != 2 or b.shape[1] != r:
                raise AdapterError(f"adapter tensor {base}: A {a.shape} and B {b.shape} are not a checkpoint "
                                   "pair A (n_in, r), B (n_out, r)")
            fold = (alpha / r) / header_scale
            b = b if fold == 1.0 else b * np.float32(fold)
            _write_ggla_tensor(f, f"{base}.loraA", a)
            _write_ggla_tensor(f, f"{base}.loraB", b)


def _write_ggla_tensor(f, name: str, data: np.ndarray) -> None:
    """n_dims, name length, type 0 (F32), ne[0..n_dims-1] (u32), name, zero padding to the next
    32-byte file offset, raw data. n_dims as ggml counts them (trailing ne of 1 dropped)."""
    data = np.ascontiguousarray(data, np.float32)
    ne = list(reversed(data.shape))[: ggml_n_dims(data.shape)]
    encoded = name.encode()
    f.write(struct.pack(f"<3I{len(ne)}I", len(ne), len(encoded), 0, *ne))
    f.write(encoded)
    f.write(b"\0" * (-f.tell() % GGLA_ALIGNMENT))
    f.write(data.astype("<f4").tobytes())


def export_adapter(path: str | os.PathLike, lora: dict[str, tuple[np.ndarray, np.ndarray]], *, fmt: str,
                   alpha: float, lora_r: int, tied_embeddings: bool, architecture: str = "llama") -> None:
    """Writes trained tensors in checkpoint orientation {base: (A_ck (n_in, r), B_ck (n_out, r))}
    as a ``fmt`` adapter ("gguf": the modern orientation, :func:`checkpoint_to_modern`; "ggla": as they are)."""
    if fmt == "gguf":
        write_gguf_adapter(path, checkpoint_to_modern(lora), alpha=alpha, architecture=architecture,
                           tied_embeddings=tied_embeddings)
    elif fmt == "ggla":
        write_ggla_adapter(path, lora, alpha=alpha, lora_r=lora_r)
    else:
        raise AdapterError(f"adapter format: expected one of {FORMATS}, got {fmt!r}")
