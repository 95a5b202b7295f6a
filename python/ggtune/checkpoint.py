"""Training checkpoints: the original finetune's GGUF layout (training.type = "finetune_lora").

Spec: original-finetune.md section D.

Orientation of the LoRA tensors (the original's, kept in checkpoints and in training): for a base
weight W with ggml ne [n_in, n_out], i.e. numpy (n_out, n_in),
    lora_a  ggml ne [r, n_in]   numpy A (n_in, r)
    lora_b  ggml ne [r, n_out]  numpy B (n_out, r)
and the effective weight is W + scale · B @ A.T (scale = alpha / r). Norm weights (ne [n_embd])
count as ne [n_embd, 1]: A (n_embd, r), B (1, r). token_embd has ne [n_embd, n_vocab]:
A (n_embd, r), B (n_vocab, r). ``Checkpoint.lora`` keeps exactly these numpy shapes.

A kind with rank 0 is not trained (a format that cannot carry it, or a tensor the model lacks,
like output on tied-embedding models): its rank key is 0 and it has no tensors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from .atomic import atomic_path
from .architecture import HParams
from .data import ShuffleState
from .finite import require_finite
from .names import ALL_KINDS, kind_of, lora_base_names

TRAINING_TYPE = "finetune_lora"
# The LoRA alpha the checkpoint was trained with: ggtune writes it (the original did not, so a
# resume with another --lora-alpha silently changed the adapters' scale); the original's
# converter and loader ignore keys they do not know.
ALPHA_KEY = "ggtune.training.lora_alpha"
# ggtune's other training state: the LoRA scale rule, the seed (a resume with --seed -1 draws the
# same dropout masks) and the validation state (best loss, evaluations since) of --early-stop.
RSLORA_KEY = "ggtune.training.rslora"
SEED_KEY = "ggtune.training.seed"
BEST_VAL_KEY = "ggtune.training.best_val_loss"
SINCE_BEST_KEY = "ggtune.training.evals_since_best"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or used; the message names the file or the setting."""


@dataclass
class TrainCounters:
    iteration_count: int = 0  # optimizer steps done
    sample_count: int = 0  # samples consumed
    token_count: int = 0  # tokens consumed (n_ctx per row)
    epoch_count: int = 0


@dataclass
class OptimizerCheckpoint:
    """Adam's state (moments [nx] float32 over the parameters in ``parameter_names`` order) and
    the convergence-test state of optim.Convergence."""
    iteration: int = 0
    m: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # [nx]
    v: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # [nx]
    just_initialized: bool = False
    best_loss: float = 0.0
    previous_loss: float = 0.0
    no_improvement_count: int = 0
    past_loss_values: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # [past]

    @property
    def past(self) -> int:
        return len(self.past_loss_values)


@dataclass
class Checkpoint:
    hparams: HParams  # of the base model; n_ctx_train is the training context, n_vocab 0 when read back
    ranks: dict[str, int]  # every kind of ALL_KINDS -> rank (0 = not trained)
    lora: dict[str, tuple[np.ndarray, np.ndarray]]  # base name "blk.0.attn_q.weight" -> (A (n_in, r), B (n_out, r))
    optimizer: OptimizerCheckpoint
    counters: TrainCounters
    shuffle: ShuffleState
    # ggtune's own key (ALPHA_KEY): the original's files do not record alpha; None for those
    lora_alpha: float | None = None
    rslora: bool = False  # scale alpha / sqrt(r) (RSLORA_KEY)
    seed: int | None = None
    best_val_loss: float | None = None
    evals_since_best: int = 0


# ---- names ----------------------------------------------------------------------------------------

def parameter_names(n_layer: int, ranks: dict[str, int]) -> list[str]:
    """The optimizer's parameters in the order of its flat moment vectors:
    ``<base>.lora_a``, ``<base>.lora_b`` for each base name of :func:`names.lora_base_names`."""
    return [f"{base}.{half}" for base in lora_base_names(n_layer, ranks) for half in ("lora_a", "lora_b")]


def output_names(pattern: str, iteration: int, pattern_it: str = "ITERATION", fn_latest: str = "LATEST") -> list[str]:
    """The files one save writes for ``pattern``: the first ``pattern_it`` replaced by the iteration
    number, then by ``fn_latest``. One name when the pattern lacks the placeholder; none for ''."""
    if not pattern:
        return []
    names = [pattern.replace(pattern_it, text, 1) if pattern_it else pattern for text in (str(iteration), fn_latest)]
    return list(dict.fromkeys(names))


# ---- saving --------------------------------------------------------------------------------------

def save_checkpoint(path: str | os.PathLike, ckpt: Checkpoint) -> None:
    """Writes ``ckpt`` atomically (the final name only ever holds a complete file)."""
    import gguf

    bases = _validated_bases(ckpt)
    hp, opt, counters, shuffle = ckpt.hparams, ckpt.optimizer, ckpt.counters, ckpt.shuffle
    with atomic_path(path) as tmp:
        w = gguf.GGUFWriter(tmp, "llama")  # writes general.architecture = "llama"
        w.add_string("training.type", TRAINING_TYPE)
        w.add_uint32("general.file_type", 0)
        for key, value in (("context_length", hp.n_ctx_train), ("embedding_length", hp.n_embd),
                           ("feed_forward_length", hp.n_ff), ("attention.head_count", hp.n_head),
                           ("attention.head_count_kv", hp.n_head_kv), ("block_count", hp.n_layer),
                           ("rope.dimension_count", hp.n_rot)):
            w.add_uint32(f"llama.{key}", value)
        w.add_float32("llama.attention.layer_norm_rms_epsilon", hp.rms_eps)
        w.add_float32("llama.rope.freq_base", hp.rope_freq_base)
        w.add_float32("llama.rope.scale_linear", hp.rope_freq_scale)
        for kind in ALL_KINDS:
            w.add_uint32(f"training.lora.rank.{kind}", ckpt.ranks[kind])
        w.add_uint32("training.file_version", 1)
        for key in ("iteration_count", "sample_count", "token_count", "epoch_count"):
            w.add_uint64(f"training.{key}", getattr(counters, key))
        w.add_uint64("training.shuffle.samples_hash", shuffle.samples_hash)
        w.add_string("training.shuffle.rng_state", shuffle.rng_state)
        w.add_uint64("training.shuffle.sample_count", shuffle.sample_count)
        w.add_uint64("training.shuffle.next_sample", shuffle.next_sample)
        if ckpt.lora_alpha is not None:
            w.add_float32(ALPHA_KEY, ckpt.lora_alpha)
        w.add_bool(RSLORA_KEY, ckpt.rslora)
        if ckpt.seed is not None:
            w.add_uint64(SEED_KEY, ckpt.seed)
        if ckpt.best_val_loss is not None:
            w.add_float32(BEST_VAL_KEY, ckpt.best_val_loss)
            w.add_uint32(SINCE_BEST_KEY, ckpt.evals_since_best)
        w.add_uint32("optimizer.file_version", 0)
        w.add_uint32("optimizer.convergence_past_count", opt.past)
        w.add_uint64("optimizer.parameter_count", len(opt.m))
        w.add_uint32("optimizer.iteration_count", opt.iteration)
        w.add_bool("optimizer.just_initialized", opt.just_initialized)
        w.add_string("optimizer.type", "adam")
        w.add_float32("optimizer.adam.best_loss", opt.best_loss)
        w.add_float32("optimizer.adam.previous_loss", opt.previous_loss)
        w.add_uint32("optimizer.adam.no_improvement_count", opt.no_improvement_count)
        for base in bases:
            a, b = ckpt.lora[base]
            w.add_tensor(f"{base}.lora_a", np.ascontiguousarray(a, np.float32))
            w.add_tensor(f"{base}.lora_b", np.ascontiguousarray(b, np.float32))
        w.add_tensor("optimizer.adam.first_moments", np.ascontiguousarray(opt.m, np.float32))
        w.add_tensor("optimizer.adam.second_moments", np.ascontiguousarray(opt.v, np.float32))
        if opt.past > 0:
            w.add_tensor("optimizer.adam.past_loss_values", np.ascontiguousarray(opt.past_loss_values, np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()


def _validated_bases(ckpt: Checkpoint) -> list[str]:
    missing_ranks = [k for k in ALL_KINDS if k not in ckpt.ranks]
    if missing_ranks:
        raise CheckpointError(f"checkpoint ranks: missing {missing_ranks}")
    bases = lora_base_names(ckpt.hparams.n_layer, ckpt.ranks)
    if set(bases) != set(ckpt.lora):
        raise CheckpointError(f"checkpoint lora tensors: expected {len(bases)} for these ranks and "
                              f"{ckpt.hparams.n_layer} layers; missing {sorted(set(bases) - set(ckpt.lora))[:4]}, "
                              f"unexpected {sorted(set(ckpt.lora) - set(bases))[:4]}")
    count = 0
    for base in bases:
        a, b = ckpt.lora[base]
        r = ckpt.ranks[kind_of(base)]
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != r or b.shape[1] != r:
            raise CheckpointError(f"checkpoint lora {base}: shapes A {a.shape}, B {b.shape}; expected "
                                  f"A (n_in, {r}) and B (n_out, {r})")
        count += a.size + b.size
    opt = ckpt.optimizer
    if len(opt.m) != count or len(opt.v) != count:
        raise CheckpointError(f"checkpoint optimizer: moments have {len(opt.m)} and {len(opt.v)} values, "
                              f"the lora tensors {count}")
    return bases


# ---- loading -------------------------------------------------------------------------------------

def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Reads a checkpoint written by :func:`save_checkpoint` (or the original finetune); every
    problem is a CheckpointError naming the file."""
    name = os.fspath(path)
    try:
        fields, tensors = _read_gguf(name)
        return _checkpoint_from(fields, tensors)
    except CheckpointError as e:
        message = str(e)
        raise CheckpointError(message if message.startswith(name) else f"{name}: {message}") from None
    except (ValueError, IndexError, KeyError, TypeError, OverflowError) as e:  # values a damaged file holds
        raise CheckpointError(f"{name}: damaged checkpoint ({type(e).__name__}: {e})") from None


def load_checkpoint_if_present(path: str | os.PathLike | None) -> Checkpoint | None:
    """``--checkpoint-in``: None (start fresh) for '' / None or a file that does not exist, as the
    original did; a file that exists but cannot be read is an error, never silently replaced."""
    if not path or not os.path.exists(path):
        return None
    return load_checkpoint(path)


def _read_gguf(name: str):
    if not os.path.isfile(name):
        raise CheckpointError("no such checkpoint file")
    from .gguf_io import GGUFError, open_gguf

    try:
        reader = open_gguf(name)  # also checks the tensor table
        tensors = {t.name: (int(t.tensor_type), np.array(t.data)) for t in reader.tensors}
    except GGUFError as e:
        raise CheckpointError(str(e)) from None
    return reader.fields, tensors


def _checkpoint_from(fields, tensors) -> Checkpoint:
    get = _FieldGetter(fields)
    training_type = get.string("training.type")
    if training_type != TRAINING_TYPE:
        raise CheckpointError(f"training.type is {training_type!r}, expected {TRAINING_TYPE!r} (a finetune checkpoint)")
    if get.string("optimizer.type") != "adam":
        raise CheckpointError(f"optimizer.type is {get.string('optimizer.type')!r}; only 'adam' is supported")
    hp = HParams(
        n_vocab=0, n_ctx_train=get.int("llama.context_length"), n_embd=get.int("llama.embedding_length"),
        n_ff=get.int("llama.feed_forward_length"), n_head=get.int("llama.attention.head_count"),
        n_head_kv=get.int("llama.attention.head_count_kv"), n_layer=get.int("llama.block_count"),
        n_rot=get.int("llama.rope.dimension_count"),
        rms_eps=get.float("llama.attention.layer_norm_rms_epsilon"),
        rope_freq_base=get.float("llama.rope.freq_base"), rope_freq_scale=get.float("llama.rope.scale_linear"))
    ranks = {kind: get.int(f"training.lora.rank.{kind}") for kind in ALL_KINDS}
    lora = {}
    for base in lora_base_names(hp.n_layer, ranks):
        lora[base] = (_tensor(tensors, f"{base}.lora_a"), _tensor(tensors, f"{base}.lora_b"))
    past = get.int("optimizer.convergence_past_count")
    opt = OptimizerCheckpoint(
        iteration=get.int("optimizer.iteration_count"),
        m=_tensor(tensors, "optimizer.adam.first_moments").reshape(-1),
        v=_tensor(tensors, "optimizer.adam.second_moments").reshape(-1),
        just_initialized=get.bool("optimizer.just_initialized"),
        best_loss=get.float("optimizer.adam.best_loss"), previous_loss=get.float("optimizer.adam.previous_loss"),
        no_improvement_count=get.int("optimizer.adam.no_improvement_count"),
        past_loss_values=(_tensor(tensors, "optimizer.adam.past_loss_values").reshape(-1) if past > 0
                          else np.zeros(0, np.float32)))
    counters = TrainCounters(**{k: get.int(f"training.{k}") for k in
                                ("iteration_count", "sample_count", "token_count", "epoch_count")})
    shuffle = ShuffleState(rng_state=get.string("training.shuffle.rng_state"),
                           samples_hash=get.int("training.shuffle.samples_hash"),
                           sample_count=get.int("training.shuffle.sample_count"),
                           next_sample=get.int("training.shuffle.next_sample"))
    ckpt = Checkpoint(hparams=hp, ranks=ranks, lora=lora, optimizer=opt, counters=counters, shuffle=shuffle,
                      lora_alpha=get.float(ALPHA_KEY) if ALPHA_KEY in fields else None,
                      rslora=get.bool(RSLORA_KEY) if RSLORA_KEY in fields else False,
                      seed=get.int(SEED_KEY) if SEED_KEY in fields else None,
                      best_val_loss=get.float(BEST_VAL_KEY) if BEST_VAL_KEY in fields else None,
                      evals_since_best=get.int(SINCE_BEST_KEY) if SINCE_BEST_KEY in fields else 0)
    if get.int("optimizer.parameter_count") != len(opt.m):
        raise CheckpointError(f"optimizer.parameter_count {get.int('optimizer.parameter_count')} does not "
                              f"match the {len(opt.m)} stored moments")
    _validated_bases(ckpt)
    tensors_read = [(f"{base}.{half}", t) for base, pair in lora.items() for half, t in zip(("lora_a", "lora_b"), pair)]
    require_finite(tensors_read + [("optimizer.adam.first_moments", opt.m), ("optimizer.adam.second_moments", opt.v)],
                   "checkpoint", CheckpointError)
    return ckpt


def _tensor(tensors, name: str) -> np.ndarray:
    import gguf

    if name not in tensors:
        raise CheckpointError(f"tensor {name!r} is missing")
    ggml_type, data = tensors[name]
    if ggml_type != gguf.GGMLQuantizationType.F32:
        raise CheckpointError(f"tensor {name!r} has ggml type {ggml_type}, expected F32")
    return data


class _FieldGetter:
    """Typed access to GGUF metadata; a missing key or a wrong type names the key."""

    def __init__(self, fields):
        self.fields = fields

    def _value(self, key: str, types: tuple):
        field_ = self.fields.get(key)
        if field_ is None:
            raise CheckpointError(f"key {key!r} is missing")
        if not field_.types or field_.types[0] not in types:
            raise CheckpointError(f"key {key!r} has type {[t.name for t in field_.types]}, expected "
                                  f"{' or '.join(t.name for t in types)}")
        return field_.parts[field_.data[0]]

    def string(self, key: str) -> str:
        import gguf

        return bytes(self._value(key, (gguf.GGUFValueType.STRING,))).decode("utf-8")

    def int(self, key: str) -> int:
        import gguf

        return int(self._value(key, (gguf.GGUFValueType.UINT32, gguf.GGUFValueType.UINT64))[0])

    def float(self, key: str) -> float:
        import gguf

        return float(self._value(key, (gguf.GGUFValueType.FLOAT32,))[0])

    def bool(self, key: str) -> bool:
        import gguf

        return bool(self._value(key, (gguf.GGUFValueType.BOOL,))[0])


# ---- resuming ------------------------------------------------------------------------------------

def check_resume_compatible(ckpt: Checkpoint, ranks: dict[str, int], opt_past: int) -> None:
    """Aborts a resume whose settings differ from the checkpoint's, as the original did."""
    changed = [f"{k} {ckpt.ranks.get(k, 0)} -> {ranks.get(k, 0)}" for k in ALL_KINDS
               if ckpt.ranks.get(k, 0) != ranks.get(k, 0)]
    if changed:
        raise CheckpointError(
            f"Provided rank differs from checkpoint file ({', '.join(changed)}). To use different rank "
            "start finetune from scratch with empty input checkpoint, e.g --checkpoint-in ''. Aborting.")
    if ckpt.optimizer.past != opt_past:
        raise CheckpointError(
            f"Optimizer parameter '--opt-past N' differs from checkpoint file ({ckpt.optimizer.past} -> {opt_past}). "
            "To use different value finetune from scratch with empty input checkpoint, e.g --checkpoint-in ''. "
            "Aborting.")


def check_fits_model(ckpt: Checkpoint, shapes: dict[str, tuple[int, int, int]], path: str, model_path: str) -> None:
    """A checkpoint resumed or exported onto a model must hold an adapter for exactly the tensors
    ``shapes`` ({base name: (rank, n_out, n_in)}, lora.target_shapes) with those shapes: a
    checkpoint of another model is refused naming the tensor, both shapes and both files."""
    missing, unexpected = sorted(set(shapes) - set(ckpt.lora)), sorted(set(ckpt.lora) - set(shapes))
    if missing or unexpected:
        raise CheckpointError(f"{path}: the checkpoint does not fit {model_path}: "
                              + (f"no adapter for {missing[:3]}" if missing else "")
                              + ("; " if missing and unexpected else "")
                              + (f"adapters for tensors the model lacks {unexpected[:3]}" if unexpected else "")
                              + " (a checkpoint of another model?)")
    for base, (rank, n_out, n_in) in shapes.items():
        a, b = ckpt.lora[base]
        if a.shape != (n_in, rank) or b.shape != (n_out, rank):
            raise CheckpointError(f"{path}: tensor {base}: the checkpoint holds A {a.shape}, B {b.shape}; "
                                  f"{model_path} needs A ({n_in}, {rank}), B ({n_out}, {rank}) "
                                  "(a checkpoint of another model?)")
