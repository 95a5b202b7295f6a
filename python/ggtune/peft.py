"""Export a LoRA adapter of a GGUF model (llama, qwen2, qwen3, gemma3) in the Hugging Face PEFT
layout (``adapter_model.safetensors`` + ``adapter_config.json``). transformers names the
projections alike in the four families (``model.layers.N.self_attn.q_proj``, ``mlp.up_proj``, ...).

Both sides compute W + scale·(B @ A) with A (r, n_in), B (n_out, r) in numpy/PyTorch orientation and
scale = alpha / r, so A and B carry over as they are, with one exception: llama.cpp's converter
(convert_hf_to_gguf.py, ``LlamaModel.permute``) reorders the rows of attn_q and attn_k so that each
head's rope pairs are adjacent (GGUF: rows (2i, 2i+1) of a head) instead of half a head apart
(Hugging Face: rows (i, i + D/2)). W_gguf = P·W_hf for that row permutation P, so
W_gguf + s·B_gguf A = P·(W_hf + s·P⁻¹B_gguf A): the exported B is P⁻¹·B_gguf. Only the llama
converter permutes (architecture.Family.permuted_qk); qwen2, qwen3 and gemma3 rows carry over as
they are.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np

from .atomic import atomic_path

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"

# GGUF base tensor -> module path inside transformers' LlamaForCausalLM
_LAYER_MODULES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_NOT_EXPRESSIBLE = {
    "token_embd": "PEFT stores embedding adapters transposed and llama.cpp lays them out "
                  "differently again; this export does not carry them",
    "norm": "a norm adapter scales a vector, which PEFT LoRA cannot express",
}
_BLOCK_NAME = re.compile(r"blk\.(\d+)\.(\w+?)(?:\.weight)?")


def unpermute_rope_rows(rows: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of convert_hf_to_gguf's rope row permutation: GGUF row order -> Hugging Face order.
    rows: (n_head*D, ...) -> same shape; within a head, GGUF row 2i+j becomes row j*D/2 + i."""
    n_rows = rows.shape[0]
    if n_head <= 0 or n_rows % (2 * n_head):
        raise ValueError(f"{n_rows} rows do not split into {n_head} heads of an even size")
    half = n_rows // n_head // 2
    return rows.reshape(n_head, half, 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def peft_module_name(base_name: str) -> str:
    """GGUF base tensor name ('blk.3.attn_q.weight' or 'blk.3.attn_q') -> transformers module path
    ('model.layers.3.self_attn.q_proj'); ValueError for tensors PEFT LoRA cannot carry."""
    if base_name in ("output", "output.weight"):
        return "lm_head"
    match = _BLOCK_NAME.fullmatch(base_name)
    kind = match.group(2) if match else base_name.removesuffix(".weight")
    if match and kind in _LAYER_MODULES:
        return f"model.layers.{int(match.group(1))}.{_LAYER_MODULES[kind]}"
    if kind.endswith("norm"):
        reason = _NOT_EXPRESSIBLE["norm"]
    else:
        reason = _NOT_EXPRESSIBLE.get(kind, "not a LLaMA projection matrix")
    raise ValueError(f"adapter tensor '{base_name}' cannot be exported to PEFT: {reason}; "
                     f"fold it into the model with `ggtune merge` instead")


def _hf_pair(base_name: str, a: np.ndarray, b: np.ndarray, n_head: int, n_head_kv: int, permuted_qk: bool):
    """Checks one pair (A: (r, n_in), B: (n_out, r)) and returns it in Hugging Face row order."""
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1] or a.shape[0] == 0:
        raise ValueError(f"adapter tensor '{base_name}': expected A (r, n_in) and B (n_out, r) with "
                         f"the same r > 0, got A {a.shape} and B {b.shape}")
    kind = base_name.split(".")[2] if base_name.startswith("blk.") else ""
    heads = {"attn_q": ("n_head", n_head), "attn_k": ("n_head_kv", n_head_kv)}.get(kind)
    if heads and permuted_qk:
        label, count = heads
        if count <= 0 or b.shape[0] % (2 * count):
            raise ValueError(f"adapter tensor '{base_name}': B has {b.shape[0]} rows, which do not "
                             f"split into {label}={count} heads of an even size")
        b = unpermute_rope_rows(b, count)
    return np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32)


def _adapter_config(ranks: dict[str, int], alpha: float | None,
                    base_model_name_or_path: str | None) -> dict:
    """PEFT scales each module by lora_alpha / r. One rank (the most common) is r; others go to
    rank_pattern. Without alpha the GGUF scale is 1, i.e. each module's alpha equals its rank."""
    r = Counter(ranks.values()).most_common(1)[0][0]
    rank_pattern = {module: rank for module, rank in ranks.items() if rank != r}
    if alpha is None:
        lora_alpha, alpha_pattern = r, dict(rank_pattern)
    else:
        lora_alpha, alpha_pattern = float(alpha), {}
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": r,
        "lora_alpha": lora_alpha,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "target_modules": sorted({module.rsplit(".", 1)[-1] for module in ranks}),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "modules_to_save": None,
        "inference_mode": True,
        "init_lora_weights": True,
    }


def export_peft(adapter: dict[str, tuple[np.ndarray, np.ndarray]], alpha: float | None,
                n_head: int, n_head_kv: int, out_dir: str | os.PathLike,
                base_model_name_or_path: str | None = None, permuted_qk: bool = True) -> dict:
    """Writes ``adapter`` ({GGUF base name: (A (r, n_in), B (n_out, r))}, effective weight
    W + (alpha / r)·B @ A, scale 1 when alpha is None) as a PEFT LoRA adapter directory.
    attn_q / attn_k B rows are un-permuted with n_head / n_head_kv when permuted_qk (llama models). Everything is checked before
    anything is written; the directory appears atomically. Returns the adapter config."""
    from safetensors.numpy import save_file

    if not adapter:
        raise ValueError("the adapter holds no tensors")
    tensors, ranks = {}, {}
    for base_name in sorted(adapter):
        module = peft_module_name(base_name)
        a, b = _hf_pair(base_name, *adapter[base_name], n_head, n_head_kv, permuted_qk)
        tensors[f"base_model.model.{module}.lora_A.weight"] = a
        tensors[f"base_model.model.{module}.lora_B.weight"] = b
        ranks[module] = a.shape[0]
    config = _adapter_config(ranks, alpha, base_model_name_or_path)
    config_text = json.dumps(config, indent=2) + "\n"
    _write_directory(Path(out_dir), {
        ADAPTER_WEIGHTS: lambda path: save_file(tensors, str(path), metadata={"format": "pt"}),
        ADAPTER_CONFIG: lambda path: path.write_text(config_text),
    })
    return config


def _write_directory(out_dir: Path, files: dict[str, Callable[[Path], None]]) -> None:
    """A new (or empty) directory is filled under a temporary name and renamed into place; in an
    existing directory each file is replaced atomically and other files are left alone."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        for name, write in files.items():
            with atomic_path(out_dir / name) as tmp:
                write(tmp)
        return
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        for name, write in files.items():
            write(tmp_dir / name)
            with open(tmp_dir / name, "rb") as f:
                os.fsync(f.fileno())
        tmp_dir.chmod(0o777 & ~_umask())  # mkdtemp makes it private
        os.replace(tmp_dir, out_dir)  # atomic; may replace an empty directory
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def read_model_heads(model_path: str | os.PathLike) -> tuple[int, int, dict[str, tuple[int, ...]], bool]:
    """(n_head, n_head_kv, {tensor name: ggml ne}, whether the converter permuted q/k rows) of a
    GGUF model of a supported family."""
    import gguf

    from .architecture import FAMILIES, SUPPORTED

    reader = gguf.GGUFReader(model_path)

    def value(key):
        field = reader.fields.get(key)
        return None if field is None else field.contents()

    arch = value("general.architecture")
    if arch not in FAMILIES:
        raise ValueError(f"{model_path}: architecture is {arch!r}; PEFT export knows the row order of "
                         f"{', '.join(repr(a) for a in SUPPORTED)} models")
    n_head = value(f"{arch}.attention.head_count")
    n_head_kv = value(f"{arch}.attention.head_count_kv")
    n_head_kv = n_head if n_head_kv is None else n_head_kv
    if not isinstance(n_head, int) or not isinstance(n_head_kv, int):
        raise ValueError(f"{model_path}: expected one head count for all layers, got "
                         f"head_count={n_head!r}, head_count_kv={n_head_kv!r}")
    shapes = {t.name: tuple(int(n) for n in t.shape) for t in reader.tensors}
    return n_head, n_head_kv, shapes, FAMILIES[arch].permuted_qk


def check_adapter_fits(adapter: dict, shapes: dict[str, tuple[int, ...]], model_path) -> None:
    """Every pair must sit on a model tensor with W ne = (n_in, n_out): A (r, n_in), B (n_out, r)."""
    for base_name, (a, b) in adapter.items():
        name = base_name if base_name.endswith(".weight") else base_name + ".weight"
        ne = shapes.get(name)
        if ne is None:
            raise ValueError(f"adapter tensor '{base_name}' has no base tensor in {model_path}")
        if len(ne) != 2 or np.shape(a)[1:] != (ne[0],) or np.shape(b)[:1] != (ne[1],):
            raise ValueError(f"adapter tensor '{base_name}': A {np.shape(a)} and B {np.shape(b)} "
                             f"do not fit the model's {name} with ggml ne {ne}")


def add_cli(subparsers) -> None:
    """Registers ``export-peft --lora A --model M --output DIR`` on an argparse subparsers object."""
    parser = subparsers.add_parser(
        "export-peft", help="export a GGUF LoRA adapter as a Hugging Face PEFT adapter",
        description="Write adapter_model.safetensors and adapter_config.json (Hugging Face PEFT "
                    "LoRA layout) from a GGUF LoRA adapter of a llama, qwen2, qwen3 or gemma3 model.")
    parser.add_argument("--lora", required=True, help="GGUF LoRA adapter to export")
    parser.add_argument("--model", required=True, help="the base GGUF model (head counts, shapes)")
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument("--base-model-name-or-path", default=None,
                        help="recorded in adapter_config.json (e.g. a Hugging Face model id)")
    parser.set_defaults(func=_run_export_peft)


def _run_export_peft(args) -> int:
    from .adapters import read_gguf_adapter

    try:
        alpha, adapter = read_gguf_adapter(args.lora)
        n_head, n_head_kv, shapes, permuted_qk = read_model_heads(args.model)
        check_adapter_fits(adapter, shapes, args.model)
        config = export_peft(adapter, alpha, n_head, n_head_kv, args.output,
                             args.base_model_name_or_path, permuted_qk=permuted_qk)
    except (ValueError, OSError) as error:
        raise SystemExit(f"ggtune export-peft: {error}") from error
    rows = (f"attn_q/attn_k rows un-permuted for n_head={n_head}, n_head_kv={n_head_kv}" if permuted_qk
            else "rows as stored (this family's converter does not permute them)")
    print(f"wrote {args.output}: {len(adapter)} LoRA modules ({', '.join(config['target_modules'])}), "
          f"r={config['r']}, lora_alpha={config['lora_alpha']}; {rows}")
    return 0
