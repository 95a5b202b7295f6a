"""`ggtune merge`: fold LoRA adapters into a GGUF model's weights.

For a base tensor W, numpy (n_out, n_in) (a 1-D norm vector of n elements counts as (1, n)),
each adapter holds A (r, n_in), B (n_out, r) and the merged tensor is

    W' = W + sum over adapters of scale · B @ A,    scale = user scale · alpha / r

(gguf-lora-adapter.md; no alpha in the file: scale = user scale). Adapter sources:
- a GGUF LoRA adapter (adapters.read_gguf_adapter, modern orientation). Every tensor it holds is
  folded, norm adapters included, although llama.cpp ignores those at run time;
- a ggtune training checkpoint (training.type = finetune_lora, checkpoint orientation
  A_ck (n_in, r), B_ck (n_out, r), W' = W + scale · B_ck @ A_ck.T, i.e. A = A_ck.T, B = B_ck).
  It can carry norm adapters (A_ck (n_embd, r), B_ck (1, r): w' = w + scale · (B_ck @ A_ck.T)[0])
  and token_embd adapters (W numpy (n_vocab, n_embd): A_ck (n_embd, r), B_ck (n_vocab, r)), which
  a GGUF adapter cannot carry to llama.cpp. ggtune's checkpoints record their alpha; the
  original's do not: then it is the caller's, by default the LoRA rank of the matrices, as the
  trainer's default (--lora-alpha = --lora-r).

The output keeps every metadata key of the base (general.file_type is updated when --outtype
changes the matrices' type) and its tensor order. Tensors are processed one at a time: dequantize,
add the adapters' product, re-quantize, write; a tensor that keeps its type and has no adapter is
copied byte for byte. Adapted linear layers going back into Q4_0/Q4_1/Q5_0/Q5_1 (or Q8_0 with
"same") are re-quantized by GPTQ first (quantize.gptq_quantize), during one base + adapter forward
over calibration text, so that their outputs rather than their values stay close to W + ΔW: a
trained ΔW is below half a 4-bit step and rounding each value to nearest would drop it. Everything is checked before the output is opened, which appears atomically.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

import gguf

from . import quantize as q
from .adapters import checkpoint_to_modern, read_gguf_adapter
from .atomic import atomic_path
from .checkpoint import TRAINING_TYPE, load_checkpoint
from .names import NORM_KINDS
from .gguf_io import open_gguf, read_model_gguf, row_bytes, type_name
from .lora_options import lora_scale
from .model import InferenceLinears, Model, LoraPair
from .options import MERGE_RANGES, check_ranges

OUTTYPE_CHOICES = ("same",) + tuple(q.OUTTYPES)
REQUANTIZE_CHOICES = ("gptq", "nearest")
CALIBRATION_WINDOW = 128  # tokens per calibration sequence (at most the model's context)
CALIBRATION_TOKENS = 4096  # at most this many calibration tokens are run
GGLA_MAGIC = b"algg"  # 0x67676C61 little-endian: the old adapter format


class MergeError(ValueError):
    """Input merge cannot use; the message names the file or tensor and what was expected."""


@dataclass
class Delta:
    """One adapter on one base tensor: W' = W + scale · b @ a."""

    a: np.ndarray  # f32 [r, n_in]
    b: np.ndarray  # f32 [n_out, r]
    scale: float
    source: str  # the adapter file, for messages


@dataclass
class _TensorPlan:
    """How one base tensor reaches the output."""

    tensor: object  # gguf.ReaderTensor
    rows: int  # n_out (1 for a vector)
    n_in: int
    out_type: int
    deltas: list[Delta]

    @property
    def raw(self) -> np.ndarray:
        """The stored bytes, uint8 [rows, row_bytes], a view of the base's map."""
        return self.tensor.data.view(np.uint8).reshape(self.rows, -1)

    @property
    def copied(self) -> bool:
        return not self.deltas and self.out_type == int(self.tensor.tensor_type)


@dataclass
class MergeSummary:
    n_tensors: int  # tensors written
    n_adapted: int  # tensors with at least one adapter folded in
    n_requantized: int  # tensors that went through float32 (adapted or converted)
    n_gptq: int = 0  # adapted tensors re-quantized by GPTQ on calibration inputs
    n_calibration_tokens: int = 0


# ---- adapter sources -----------------------------------------------------------------------------

def read_adapter_source(path: str | os.PathLike, user_scale: float = 1.0,
                        alpha: Optional[float] = None, architecture: Optional[str] = None) -> dict[str, Delta]:
    """{base tensor name: Delta} of a GGUF LoRA adapter or a ggtune training checkpoint.

    alpha: replaces the adapter's alpha; for a checkpoint the default is the alpha it records, or
    for the original's checkpoints (which do not) the rank of its matrix adapters (see
    :func:`default_checkpoint_alpha`)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MergeError(f"{path}: no such adapter file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == GGLA_MAGIC:
        raise MergeError(f"{path}: an old ggla adapter; merge reads GGUF LoRA adapters and ggtune "
                         "training checkpoints (merge the checkpoint the adapter was trained into)")
    if _is_training_checkpoint(path):
        return _checkpoint_deltas(path, user_scale, alpha)
    file_alpha, pairs = read_gguf_adapter(path, architecture)
    alpha = file_alpha if alpha is None else alpha
    return {base: Delta(a, b, _scale(user_scale, alpha, a.shape[0]), path) for base, (a, b) in pairs.items()}


def _is_training_checkpoint(path: str) -> bool:
    try:
        field = gguf.GGUFReader(path).fields.get("training.type")
    except Exception:  # not readable as GGUF: read_gguf_adapter reports it with the file name
        return False
    return field is not None and field.contents() == TRAINING_TYPE


def _checkpoint_deltas(path: str, user_scale: float, alpha: Optional[float]) -> dict[str, Delta]:
    ckpt = load_checkpoint(path)
    if alpha is None:
        alpha = ckpt.lora_alpha if ckpt.lora_alpha is not None else default_checkpoint_alpha(ckpt.ranks, path)
    modern = checkpoint_to_modern(ckpt.lora)  # A = A_ck.T (r, n_in), B = B_ck (n_out, r)
    # a checkpoint trained with --rslora scales by alpha / sqrt(r), as its training did
    return {base: Delta(a, b, float(user_scale) * lora_scale(alpha, a.shape[0], ckpt.rslora), path)
            for base, (a, b) in modern.items()}


def default_checkpoint_alpha(ranks: dict[str, int], path: str = "checkpoint") -> float:
    """The trainer's default alpha, its --lora-r, which is the rank every matrix kind defaults to
    (the most common one); norms default to rank 1 and do not tell it."""
    matrix_ranks = [r for kind, r in ranks.items() if r > 0 and kind not in NORM_KINDS]
    if not matrix_ranks:
        raise MergeError(f"{path}: the checkpoint trains only norm adapters, so its --lora-r (the "
                         "default alpha) is unknown; pass --lora-alpha")
    return float(Counter(matrix_ranks).most_common(1)[0][0])


def _scale(user_scale: float, alpha: Optional[float], rank: int) -> float:
    return float(user_scale) * (float(alpha) / rank if alpha is not None else 1.0)


# ---- planning ------------------------------------------------------------------------------------

def _base_reader(model: str) -> gguf.GGUFReader:
    reader = open_gguf(model)
    fields = reader.fields

    def text(key):
        return fields[key].contents() if key in fields else None

    if text("general.type") == "adapter":
        raise MergeError(f"{model}: is a LoRA adapter (general.type = adapter); --model needs the base model")
    if text("training.type") == TRAINING_TYPE:
        raise MergeError(f"{model}: is a LoRA training checkpoint; pass it as --lora and the base model as --model")
    return reader


def _geometry(tensor) -> tuple[int, int]:
    """(rows, n_in) of a tensor: ne (n_in, n_out) -> (n_out, n_in); ne (n,) -> (1, n)."""
    ne = [int(n) for n in tensor.shape]
    return int(np.prod(ne[1:], dtype=np.int64)), ne[0]


def _attach(deltas_by_tensor: dict[str, list[Delta]], tensors: dict, deltas: dict[str, Delta], model: str) -> None:
    """Checks each delta against its base tensor and files it under the tensor's name."""
    for base, d in deltas.items():
        name = base if base.endswith(".weight") else base + ".weight"
        tensor = tensors.get(name)
        if tensor is None:
            raise MergeError(f"{d.source}: adapter tensor '{base}' has no tensor '{name}' in {model}")
        rows, n_in = _geometry(tensor)
        r = d.a.shape[0]
        if len(tensor.shape) > 2 or d.a.shape != (r, n_in) or d.b.shape != (rows, r):
            ne = [int(n) for n in tensor.shape]
            raise MergeError(f"{d.source}: adapter for '{name}' has A {d.a.shape} and B {d.b.shape}; the "
                             f"model's tensor (ggml ne {ne}) needs A (r, {n_in}) and B ({rows}, r)")
        deltas_by_tensor.setdefault(name, []).append(d)


def _out_type(tensor, outtype: str, adapted: bool) -> int:
    """The tensor's output type, checked: gguf-py must be able to quantize it if it changes."""
    base_type = int(tensor.tensor_type)
    wanted = base_type if outtype == "same" or len(tensor.shape) != 2 else int(q.OUTTYPES[outtype])
    if wanted == base_type and not adapted:
        return wanted  # copied byte for byte
    if not q.can_quantize(wanted):
        raise MergeError(f"tensor '{tensor.name}' is {type_name(wanted)}, which ggtune cannot quantize "
                         f"(gguf-py has no quantizer for it); choose --outtype q8_0, f16 or f32")
    n_in = int(tensor.shape[0])
    if n_in % q.block_size(wanted):
        raise MergeError(f"tensor '{tensor.name}' has rows of {n_in} values, not a multiple of the "
                         f"{type_name(wanted)} block of {q.block_size(wanted)}; choose --outtype f16 or f32")
    return wanted


def _plan(reader: gguf.GGUFReader, deltas_by_tensor: dict[str, list[Delta]], outtype: str) -> list[_TensorPlan]:
    plans = []
    for t in reader.tensors:
        rows, n_in = _geometry(t)
        deltas = deltas_by_tensor.get(t.name, [])
        plans.append(_TensorPlan(t, rows, n_in, _out_type(t, outtype, bool(deltas)), deltas))
    return plans


# ---- writing -------------------------------------------------------------------------------------

def _target(plan: _TensorPlan) -> tuple[np.ndarray, np.ndarray]:
    """(W, W + sum of scale · B @ A), float32 [rows, n_in] each."""
    w = q.dequantize(plan.raw, int(plan.tensor.tensor_type), plan.n_in)
    values = w.copy()
    for d in plan.deltas:
        values += np.float32(d.scale) * (d.b @ d.a)
    return w, values


def _merged_tensor(plan: _TensorPlan, done: dict[str, np.ndarray]) -> np.ndarray:
    """The output bytes of one tensor, uint8 [rows, row_bytes]; only this tensor is in float.
    done: bytes already made (by GPTQ) by tensor name."""
    if plan.copied:
        return plan.raw
    if plan.tensor.name in done:
        return done.pop(plan.tensor.name)
    base_type = int(plan.tensor.tensor_type)
    w, values = _target(plan)
    if plan.out_type == base_type:
        return q.requantize_closest(values, plan.raw, w, base_type)
    return q.quantize(values, plan.out_type)


# ---- GPTQ: re-quantize adapted tensors to keep their outputs on calibration text -----------------

_SHARED_INPUTS = {"attn_q": "attn_in", "attn_k": "attn_in", "attn_v": "attn_in",
                  "ffn_gate": "ffn_in", "ffn_up": "ffn_in"}  # matrices that read the same activations


def default_calibration() -> str:
    """The package's bundled text (the Apache-2.0 licence), used when no --calibration is given."""
    from importlib import resources

    return str(resources.files("ggtune").joinpath("data/demo.txt"))


class _CollectingLinears(InferenceLinears):
    """Inference products that first hand each linear layer's input x f32 [T, n_in] to on_input."""

    def __init__(self, lora, precision: str, on_input: Callable[[str, np.ndarray], None]):
        super().__init__(lora, precision)
        self.on_input = on_input

    def forward(self, x, items, outs=None):
        for _, name in items:
            self.on_input(name, x)
        return super().forward(x, items, outs)


class _InputCollector(Model):
    """The base + adapter forward that hands each linear layer's input x f32 [T, n_in] to on_input."""

    def __init__(self, weights, lora, on_input: Callable[[str, np.ndarray], None]):
        # Exact products: GPTQ fits the outputs base + adapters really computes. Q8-rounded
        # activations (int8, ggml) move this model's inputs by 2-5% after a few layers, and
        # a fit to them measured 2% off in cross-entropy (0.1% with f32).
        super().__init__(weights, lora, precision="f32")
        self.block.lin = _CollectingLinears(self.lora, "f32", on_input)


def _calibration_batch(model: Model, calibration: str, model_path: str) -> np.ndarray:
    """Token ids int32 [B, S] of the calibration text: consecutive windows of S tokens."""
    try:
        with open(calibration, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise MergeError(f"{calibration}: cannot read the calibration text (expected UTF-8): {e}") from None
    try:
        tokens = model.tokenize(text)[:CALIBRATION_TOKENS]
    except Exception as e:  # no vocabulary in the model, typically a converted checkpoint
        raise MergeError(f"{model_path}: cannot tokenize the calibration text ({e}); "
                         "use --requantize nearest") from None
    window = min(CALIBRATION_WINDOW, model.hparams.n_ctx_train)
    n = len(tokens) // window
    if n == 0:
        raise MergeError(f"{calibration}: {len(tokens)} tokens; calibration needs at least {window}")
    return np.asarray(tokens[: n * window], dtype=np.int32).reshape(n, window)


def _uses_gptq(plan: _TensorPlan, outtype: str) -> bool:
    """Adapted linear layers whose output is a GPTQ type; --outtype q8_0 (a conversion whose
    rounding is far below any adapter) keeps rounding to nearest."""
    name = plan.tensor.name
    types = q.GPTQ_TYPES if outtype == "same" else q.GPTQ_TYPES - {int(gguf.GGMLQuantizationType.Q8_0)}
    return (bool(plan.deltas) and plan.out_type in types and name != "token_embd.weight"
            and (name.startswith("blk.") or name == "output.weight"))


def _gptq_tensor(plan: _TensorPlan, hessian: np.ndarray) -> np.ndarray:
    """Raw bytes [rows, row_bytes] of W + ΔW by GPTQ. Grids: where the type stays, each block's old
    (d, m) while it covers the block (measured better than a fresh quantization's: with ΔW = 0 it
    gives W back exactly; on the trained SmolLM2 adapter, held-out CE +1.5% vs +1.8% of base +
    adapter without act order); a fresh quantization's otherwise."""
    _, target = _target(plan)
    if plan.out_type == int(plan.tensor.tensor_type):
        grid = q.BlockGrid.for_target(target, plan.raw, plan.out_type)
    else:
        grid = q.BlockGrid.of_raw(q.quantize(target, plan.out_type), plan.out_type)
    return q.gptq_quantize(target, hessian, grid)


def _gptq_requantize(model_path: str, plans: list[_TensorPlan], gptq_plans: list[_TensorPlan],
                     calibration: str) -> tuple[dict[str, np.ndarray], int]:
    """({tensor name: raw bytes} of each of gptq_plans, calibration tokens): runs base + adapters once over
    the calibration text; each linear layer's H = XᵀX (float64) feeds GPTQ as soon as it is seen."""
    weights = read_model_gguf(model_path)
    lora = {p.tensor.name: [LoraPair(d.a, d.b, d.scale) for d in p.deltas]
            for p in plans if p.tensor.name.startswith("blk.") or p.tensor.name == "output.weight"}
    by_name = {p.tensor.name: p for p in gptq_plans}
    done: dict[str, np.ndarray] = {}
    hessians: dict[tuple[str, str], np.ndarray] = {}  # this layer's, by (layer, input)

    def on_input(name: str, x: np.ndarray) -> None:
        plan = by_name.get(name)
        if plan is None:
            return
        layer, kind = name.split(".")[1], name.split(".")[2]
        key = (layer, _SHARED_INPUTS.get(kind, kind))
        if key not in hessians:
            hessians.clear()  # a new layer or input: earlier ones are done
            x64 = x.astype(np.float64)
            hessians[key] = x64.T @ x64
        done[name] = _gptq_tensor(plan, hessians[key])

    model = _InputCollector(weights, lora, on_input)
    batch = _calibration_batch(model, calibration, model_path)
    h = model.hidden(batch)
    if "output.weight" in by_name:  # the head reads the final normed hidden states
        h64 = h.astype(np.float64)
        done["output.weight"] = _gptq_tensor(by_name["output.weight"], h64.T @ h64)
    return done, batch.size



def _refuse_overwriting_inputs(output: str, inputs: list[str]) -> None:
    """--output must not be one of the files being read (also through a link): the base model is
    memory-mapped while the output is written, and replacing it loses the original."""
    if not os.path.exists(output):
        return
    for path in inputs:
        if os.path.exists(path) and os.path.samefile(path, output):
            raise MergeError(f"--output {output} is the same file as the input {path}; "
                             "write the merged model to a new file")


def _copy_metadata(writer: gguf.GGUFWriter, reader: gguf.GGUFReader, outtype: str) -> None:
    """Every key of the base in its order, with its value type; general.file_type follows --outtype."""
    for key, f in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":  # the writer adds those
            continue
        if key == "general.alignment":
            writer.data_alignment = int(f.contents())
        value = f.contents()
        if key == "general.file_type" and outtype != "same":
            value = int(q.FILE_TYPES[q.OUTTYPES[outtype]])
        sub_type = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, f.types[0], sub_type)
    if "general.file_type" not in reader.fields and outtype != "same":
        writer.add_file_type(int(q.FILE_TYPES[q.OUTTYPES[outtype]]))


def _write(output: str, reader: gguf.GGUFReader, plans: list[_TensorPlan], outtype: str,
           done: dict[str, np.ndarray], progress: Optional[Callable[[int, int], None]]) -> None:
    arch = reader.fields["general.architecture"].contents() if "general.architecture" in reader.fields else "llama"
    with atomic_path(output) as tmp:
        writer = gguf.GGUFWriter(tmp, arch)
        _copy_metadata(writer, reader, outtype)
        for p in plans:
            nbytes = p.rows * row_bytes(p.out_type, p.n_in)
            shape = [int(n) for n in reversed(p.tensor.shape)]  # numpy order; the writer reverses it
            writer.add_tensor_info(p.tensor.name, shape, np.dtype(np.float32), nbytes,
                                   raw_dtype=gguf.GGMLQuantizationType(p.out_type))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for i, p in enumerate(plans):
            writer.write_tensor_data(_merged_tensor(p, done))
            if progress:
                progress(i + 1, len(plans))
        writer.close()


def merge(model: str | os.PathLike, loras: Sequence[tuple], output: str | os.PathLike, outtype: str = "same",
          progress: Optional[Callable[[int, int], None]] = None, requantize: str = "gptq",
          calibration: Optional[str | os.PathLike] = None) -> MergeSummary:
    """Writes ``output``: ``model`` with the adapters folded into its weights.

    loras: [(path, user scale) or (path, user scale, alpha or None), ...], GGUF LoRA adapters or
    ggtune training checkpoints; several adapters on one tensor add up. outtype: "same" (each
    tensor keeps its type, adapted ones are re-quantized into it) or one of quantize.OUTTYPES
    (every matrix converted; 1-D tensors keep their type). progress(done, total) in tensors.
    requantize: how adapted matrices go back into a Q4_0/Q4_1/Q5_0/Q5_1 type (or Q8_0 with "same"): "gptq" (default)
    chooses the quants that keep the layer's outputs on the calibration text (UTF-8 file, default
    :func:`default_calibration`) as base + adapters computes them; "nearest" rounds each block
    (the closer of a fresh quantization and the old block). Other types always round.
    Raises MergeError / GGUFError / AdapterError / CheckpointError before writing anything."""
    model, output = os.fspath(model), os.fspath(output)
    if outtype not in OUTTYPE_CHOICES:
        raise MergeError(f"outtype: expected one of {', '.join(OUTTYPE_CHOICES)}, got {outtype!r}")
    if requantize not in REQUANTIZE_CHOICES:
        raise MergeError(f"requantize: expected one of {', '.join(REQUANTIZE_CHOICES)}, got {requantize!r}")
    if not loras:
        raise MergeError("no adapter to merge (give at least one --lora)")
    _refuse_overwriting_inputs(output, [model] + [os.fspath(tuple(entry)[0]) for entry in loras])
    reader = _base_reader(model)
    tensors = {t.name: t for t in reader.tensors}
    arch = reader.fields["general.architecture"].contents() if "general.architecture" in reader.fields else None
    deltas_by_tensor: dict[str, list[Delta]] = {}
    for entry in loras:
        path, scale, alpha = (tuple(entry) + (None,))[:3]
        _attach(deltas_by_tensor, tensors, read_adapter_source(path, scale, alpha, arch), model)
    plans = _plan(reader, deltas_by_tensor, outtype)
    done, n_calibration = {}, 0
    gptq_plans = [p for p in plans if requantize == "gptq" and _uses_gptq(p, outtype)]
    if gptq_plans:
        calibration = os.fspath(calibration) if calibration is not None else default_calibration()
        done, n_calibration = _gptq_requantize(model, plans, gptq_plans, calibration)
    n_gptq = len(done)
    _write(output, reader, plans, outtype, done, progress)
    return MergeSummary(n_tensors=len(plans), n_adapted=len(deltas_by_tensor),
                        n_requantized=sum(not p.copied for p in plans), n_gptq=n_gptq,
                        n_calibration_tokens=n_calibration)


# ---- command line --------------------------------------------------------------------------------

def add_cli(subparsers) -> None:
    """Registers ``merge --model M --lora A [--lora-scale S] [--lora-alpha ALPHA] ... --output O
    [--outtype T]`` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "merge", help="fold LoRA adapters into a model's weights",
        description="Write a GGUF model with LoRA adapters (GGUF adapters or ggtune training "
                    "checkpoints) folded into its weights. --lora-scale and --lora-alpha pair with the "
                    "--lora options in order.")
    p.add_argument("--model", "-m", required=True, help="base GGUF model")
    p.add_argument("--lora", action="append", required=True,
                   help="GGUF LoRA adapter or ggtune training checkpoint (repeatable)")
    p.add_argument("--lora-scale", type=float, action="append", default=[],
                   help="user scale of the matching --lora (default 1.0)")
    p.add_argument("--lora-alpha", type=float, action="append", default=[],
                   help="alpha of the matching --lora (scale alpha/r); default: the adapter's "
                        "adapter.lora.alpha, for a checkpoint its LoRA rank (the trainer's default)")
    p.add_argument("--output", "-o", required=True, help="merged GGUF model to write")
    p.add_argument("--outtype", choices=OUTTYPE_CHOICES, default="same",
                   help="type of the merged matrices: same (each tensor keeps its type, default) or one for all")
    p.add_argument("--requantize", choices=REQUANTIZE_CHOICES, default="gptq",
                   help="how adapted matrices return to a Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 type: gptq (default) keeps "
                        "their outputs on --calibration text, nearest rounds each block")
    p.add_argument("--calibration", default=None,
                   help="UTF-8 text whose activations gptq preserves (default: the bundled Apache-2.0 text; "
                        f"at most {CALIBRATION_TOKENS} tokens are used)")
    p.set_defaults(func=run)


def _paired(values: list, n: int, option: str, default) -> list:
    if len(values) > n:
        raise MergeError(f"{option} given {len(values)} times for {n} --lora")
    return list(values) + [default] * (n - len(values))


def run(args) -> int:
    from .progress import Progress

    from .cli import require_file

    check_ranges(args, MERGE_RANGES)
    require_file(args.model, "--model")
    for path in args.lora:
        require_file(path, "--lora")
    scales = _paired(args.lora_scale, len(args.lora), "--lora-scale", 1.0)
    alphas = _paired(args.lora_alpha, len(args.lora), "--lora-alpha", None)
    bar = Progress(0, "merge (tensors)")
    try:  # errors: one line by cli.main
        summary = merge(args.model, list(zip(args.lora, scales, alphas)), args.output, args.outtype,
                        progress=bar.update, requantize=args.requantize, calibration=args.calibration)
    finally:
        bar.close()
    print(f"wrote {args.output}: {summary.n_tensors} tensors, {summary.n_adapted} with adapters folded in, "
          f"{summary.n_requantized} re-quantized ({args.outtype}; {summary.n_gptq} by GPTQ on "
          f"{summary.n_calibration_tokens} calibration tokens), the rest copied unchanged")
    return 0
