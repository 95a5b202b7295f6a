"""LoRA finetuning: ``ggtune.finetune()`` and ``ggtune finetune``.

One run: load the base model (memory-mapped, stays quantized) -> read and tokenize the data ->
choose the adapted tensors -> start fresh or resume a checkpoint -> print the memory plan ->
``adam_iter`` optimizer steps (each ``grad_acc`` forward/backward passes) with periodic saves ->
final checkpoint and adapter. Ctrl-C saves both and stops cleanly.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass, field, replace

import numpy as np

from . import _core, adapters, checkpoint as ckpt_io, data as data_io, distributed, validation
from .dropout import LoraDropout
from .watch import RunWatch
from .graph import Graph, Grads
from .lora import LoraSet, init_lora, target_shapes
from .lora_options import adapter_alpha_and_factors, default_rank, parse_targets
from .names import RANK_OPTIONS
from .memory import check_fits, current_anon_rss, peak_rss, plan_memory
from .optim import Adam, AdamState, Convergence, learning_rate_schedule
from .finite import TrainingDiverged, check_training_step
from .options import FinetuneOptions, options_from_kwargs
from .progress import Progress
from .profile import Profiler

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class FinetuneResult:
    losses: list[float] = field(default_factory=list)          # per optimizer step (mean over passes)
    learning_rates: list[float] = field(default_factory=list)
    tokens_per_second: list[float] = field(default_factory=list)
    written: list[str] = field(default_factory=list)           # paths of checkpoints and adapters
    iterations: int = 0                                        # global optimizer iteration at the end
    interrupted: bool = False
    signal: int = 0                                            # the stop signal received (SIGINT, SIGTERM)
    stopped_by: str = ""                                       # why training ended early, if it did
    memory_plan_bytes: int = 0
    kept_layers: int = 0                                       # layers that kept their activations (the plan's)
    peak_rss_bytes: int = 0
    trained_tensors: list[str] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)      # per optimizer step, before clipping
    val_losses: list[tuple[int, float]] = field(default_factory=list)  # (iteration, held-out loss)
    best_val_loss: float | None = None                         # best held-out loss (this run or resumed)
    metrics_path: str = ""                                     # the metrics log ('' when disabled)

    @property
    def val_perplexities(self) -> list[tuple[int, float]]:
        return [(it, validation.ValidationResult(loss, 0).perplexity) for it, loss in self.val_losses]
    exchange_seconds: list[float] = field(default_factory=list)  # per step, in the MPI gradient exchange


def finetune(model_base: str, train_data: str, lora_out: str = "ggml-lora-ITERATION-f32.gguf",
             **options) -> FinetuneResult:
    """Trains LoRA adapters on ``model_base`` with ``train_data``; the options are those of
    ``ggtune finetune`` as snake_case keywords (see ``ggtune finetune --help``)."""
    opts = options_from_kwargs(model_base=model_base, train_data=train_data, lora_out=lora_out, **options)
    return run(opts)


def run(opts: FinetuneOptions) -> FinetuneResult:
    """One training run: in this process alone, or data-parallel over the ranks of an MPI job
    (distributed.py); rank 0 alone prints and writes files."""
    with distributed.session(opts.mpi_timeout) as ranks:
        return _run(opts, ranks)


def _run(opts: FinetuneOptions, dist) -> FinetuneResult:
    def check_inputs():
        opts.check()
        if opts.batch < dist.size:
            raise ValueError(f"--batch {opts.batch}: each of the {dist.size} ranks needs at least one sequence")
        return distributed.input_digest(opts)

    dist.agree("the inputs", check_inputs)
    log = _logger(opts.verbose and dist.is_root)
    from .model import load_model

    model = load_model(opts.model_base, n_threads=opts.threads or None, precision=opts.precision)
    _apply_overrides(model, opts)
    ranks = resolve_ranks(opts, model.weights.tied_embeddings, log)
    resumed = dist.from_root(lambda: _read_checkpoint(opts, ranks))  # the others need no copy of it
    if resumed is not None:
        fitted = resumed.ranks if opts.only_write_lora else ranks
        ckpt_io.check_fits_model(resumed, target_shapes(model.weights, fitted), opts.checkpoint_in, opts.model_base)
    alpha = _resolve_alpha(opts, resumed, log)
    rslora = _resolve_rslora(opts, resumed, log)
    if opts.only_write_lora:
        if resumed is None:
            raise ValueError(f"--only-write-lora: needs an existing --checkpoint-in, got {opts.checkpoint_in!r}")
        lora = _lora_from_checkpoint(resumed, alpha, rslora)
        result = FinetuneResult(iterations=resumed.counters.iteration_count)
        result.written = write_adapter(opts, model, lora, resumed.counters.iteration_count) if dist.is_root else []
        log(f"wrote {', '.join(result.written)}")
        return result

    tokenizer = model.tokenizer
    samples = _load_samples(opts, model, tokenizer, opts.train_data)
    samples, val_samples, val_notes = validation.held_out(
        opts, samples, lambda path: _load_samples(opts, model, tokenizer, path))
    for note in samples.notes + val_notes:
        log(note)
    runtime_bytes = current_anon_rss()  # before any training buffer exists
    seed = dist.from_root(lambda: _resolve_seed(opts, resumed))
    lora = (_lora_from_checkpoint(resumed, alpha, rslora) if resumed
            else init_lora(model.weights, ranks, alpha, seed, rslora=rslora))
    profiler = Profiler(enabled=opts.profile)
    graph = Graph(model.weights, lora, precision=opts.precision, kernels=profiler.wrap(_core))
    evaluator = None if val_samples is None else validation.Evaluator(
        graph, val_samples, n_ctx=opts.ctx, n_batch=opts.batch, bos_id=tokenizer.bos_id,
        eos_id=tokenizer.eos_id, pack=opts.pack, start_with_bos=opts.start_with_bos)
    grads = Grads.like(lora)
    adam = Adam(lora.parameters(), beta1=opts.adam_beta1, beta2=opts.adam_beta2, decay=opts.adam_decay,
                decay_min_ndim=opts.adam_decay_min_ndim, gclip=opts.adam_gclip)
    convergence = Convergence(past=opts.opt_past, delta=opts.opt_delta,
                              max_no_improvement=opts.opt_max_no_improvement, epsf=opts.adam_epsf)
    counters = ckpt_io.TrainCounters()
    if resumed:
        adam.load_state(AdamState(resumed.optimizer.iteration, resumed.optimizer.m, resumed.optimizer.v))
        _restore_convergence(convergence, resumed.optimizer)
        counters = resumed.counters
        log(f"resuming from {opts.checkpoint_in} at iteration {counters.iteration_count}")
    try:
        stream = data_io.BatchStream(
            samples, data_io.BatchOptions(n_ctx=opts.ctx, n_batch=opts.batch, separate_with_eos=opts.separate_with_eos,
                                          separate_with_bos=opts.separate_with_bos,
                                          start_with_bos=opts.start_with_bos,
                                          fill_with_next_samples=opts.fill_with_next_samples,
                                          sample_random_offsets=opts.sample_random_offsets, pack=opts.pack),
            bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, seed=seed,
            state=resumed.shuffle if resumed else None, force_reshuffle=opts.force_reshuffle)
    except data_io.DataError as e:  # the checkpoint's shuffle state, reused for the same data
        raise ckpt_io.CheckpointError(f"{opts.checkpoint_in}: {e} (--force-reshuffle starts a new shuffle)") from None
    if resumed and stream.reshuffled:
        log("the training data differs from the checkpoint's (or --force-reshuffle): shuffling afresh")
    dist.agree("the tokenized data and the adapters", lambda: {
        "tokenized training data": stream.state.samples_hash,
        "initial adapters": distributed.arrays_digest(lora.parameters().values())})

    local_rows = dist.rows(opts.batch)
    plan = plan_memory(model.weights, lora.n_parameters(), opts.ctx, local_rows.stop - local_rows.start,
                       checkpointing=opts.use_checkpointing, keep_layers=opts.keep_layers,
                       head_chunk=graph.head_chunk, lora_ranks=lora.ranks_by_kind(),
                       runtime_bytes=runtime_bytes, precision=opts.precision, budget_mib=opts.memory_budget)
    log(f"training {len(lora.pairs)} adapted tensors, {lora.n_parameters():,} parameters; "
        f"{samples.count:,} samples of {len(samples.tokens):,} tokens")
    for line in plan.lines():
        log(line)
    check_fits(plan, f"--batch {opts.batch} --ctx {opts.ctx}")
    for line in dist.describe(opts.batch, lora.n_parameters(), opts.threads):
        log(line)

    state = _TrainState(opts, model, lora, graph, grads, adam, convergence, counters, stream, resumed is None,
                        profiler, dist)
    state.keep_layers = plan.kept_layers
    state.watch = RunWatch(opts, evaluator, resumed, seed, samples.count, writes_files=dist.is_root)
    state.dropout = LoraDropout(opts.lora_dropout, seed)
    result = state.train(log)
    result.memory_plan_bytes, result.kept_layers = plan.total, plan.kept_layers
    result.peak_rss_bytes = peak_rss()
    result.trained_tensors = list(lora.pairs)
    log(f"peak RSS {result.peak_rss_bytes / 2**20:.1f} MiB (plan {plan.total / 2**20:.1f} MiB)")
    return result


# ----------------------------------------------------------------------------- the loop
class _TrainState:
    def __init__(self, opts, model, lora, graph, grads, adam, convergence, counters, stream, fresh, profiler, dist):
        self.opts, self.model, self.lora, self.graph, self.grads = opts, model, lora, graph, grads
        self.dist = dist  # distributed.Solo or MpiRanks
        self.adam, self.convergence, self.counters, self.stream = adam, convergence, counters, stream
        self.fresh = fresh
        self.interrupt_requested = 0  # the stop signal (SIGINT, SIGTERM) seen by this process, 0 if none
        self.interrupted = False  # ... and agreed by every rank: the loop stops after this step
        self.profiler = profiler
        self.keep_layers = 0  # layers that keep their activations, as the memory plan chose

    def train(self, log) -> FinetuneResult:
        opts, result = self.opts, FinetuneResult()
        progress = Progress(opts.adam_iter, "finetune", enabled=opts.verbose and self.dist.is_root)
        # Under MPI, SIGTERM is the launcher stopping the ranks because one failed: distributed.py
        # keeps its own handler for it; a single process saves on it as on Ctrl-C.
        caught = STOP_SIGNALS if self.dist.size == 1 else (signal.SIGINT,)
        previous = {signum: signal.signal(signum, self._on_signal) for signum in caught} if _main_thread() else {}
        epochs_done, watch = 0, self.watch
        result.metrics_path = watch.metrics.path
        base = watch.baseline(self.fresh)
        if base is not None:
            result.val_losses.append((0, base.loss))
            log(f"validation before training: loss {base.loss:.4f}, perplexity {base.perplexity:.3f}")
        try:
            for step in range(opts.adam_iter):
                started, exchanged = time.perf_counter(), self.dist.exchange_seconds
                loss, epochs = self.step()
                result.exchange_seconds.append(self.dist.exchange_seconds - exchanged)
                epochs_done += epochs
                elapsed = time.perf_counter() - started
                tokens = opts.ctx * opts.batch * opts.grad_acc
                lr = self.last_lr
                result.losses.append(loss)
                result.learning_rates.append(lr)
                result.tokens_per_second.append(tokens / elapsed)
                result.grad_norms.append(self.last_grad_norm)
                val = watch.evaluate_if_due(self.counters.iteration_count, step + 1 == opts.adam_iter)
                if val is not None:
                    result.val_losses.append((self.counters.iteration_count, val.loss))
                    if watch.best.update(val.loss) and watch.writes_best:
                        result.written += write_adapter(self.opts, self.model, self.lora, 0, best=True)
                watch.log_iteration(self, loss, tokens / elapsed, val)
                progress.update(step + 1, it=self.counters.iteration_count, loss=loss, lr=lr,
                                tok_s=round(tokens / elapsed, 1),
                                **({} if watch.last is None else {"val": watch.last.loss}))
                if opts.profile:
                    log(self.profiler.report(self.counters.iteration_count))
                stop = self._stop_reason(loss, epochs_done) or watch.stop_reason()
                last = step + 1 == opts.adam_iter or stop or self.interrupted
                if not last and opts.save_every > 0 and self.counters.iteration_count % opts.save_every == 0:
                    result.written += self.save()
                if stop or self.interrupted:
                    result.stopped_by = f"interrupted ({self._stop_signal().name})" if self.interrupted else stop
                    break
        except TrainingDiverged as e:
            raise TrainingDiverged(f"{e}: training diverged and stopped; nothing of this iteration was saved"
                                   f"{_last_saved(result.written)} (try a lower --adam-alpha, "
                                   "--adam-gclip 1)") from None
        finally:
            progress.close()
            watch.metrics.close()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        result.written = list(dict.fromkeys(result.written + self.save()))  # periodic saves reuse names
        result.best_val_loss = watch.best.best
        if watch.last is not None:
            log(f"validation: loss {watch.last.loss:.4f}, perplexity {watch.last.perplexity:.3f} "
                f"(best {watch.best.best:.4f})")
        result.iterations = self.counters.iteration_count
        result.interrupted = bool(self.interrupted)
        result.signal = int(self._stop_signal()) if self.interrupted else 0
        if result.stopped_by:
            log(f"stopped: {result.stopped_by}")
        log(f"wrote {', '.join(result.written)}")
        return result

    def step(self) -> tuple[float, int]:
        """One optimizer step over grad_acc batches; returns (mean loss, epochs completed)."""
        opts, prof = self.opts, self.profiler
        self.grads.reset()
        loss_sums, kept, epochs = [], [], 0
        for micro in range(opts.grad_acc):
            with prof.phase("data"):
                batch = self.stream.next_batch()  # the whole global batch, on every rank
            n_kept = max(int((batch.targets >= 0).sum()), 1)
            mine = self.dist.rows(batch.inputs.shape[0])  # this rank's rows, scaled by the global count
            self.graph.dropout = self.dropout.for_pass(self.counters.iteration_count, micro, mine.start, opts.ctx)
            with prof.phase("forward+backward"):
                loss_sum, _ = self.graph.loss_and_grads(batch.inputs[mine], batch.targets[mine], self.grads,
                                                        checkpointing=opts.use_checkpointing,
                                                        keep_layers=self.keep_layers,
                                                        loss_scale=1.0 / (n_kept * opts.grad_acc),
                                                        **data_io.attention_layout(batch, mine))
            self.graph.dropout = None
            loss_sums.append(loss_sum)
            kept.append(n_kept)
            self.counters.sample_count += batch.used_samples
            self.counters.token_count += batch.inputs.size
            epochs += int(batch.epoch_completed)
        with prof.phase("gradient exchange"):
            loss_sums, self.interrupted = self.dist.sum_step(self.grads.arrays(), loss_sums,
                                                             bool(self.interrupt_requested))
        loss = float(np.mean([s / k for s, k in zip(loss_sums, kept)]))
        if self.fresh and self.adam.iteration == 0:
            self.convergence.start(loss)
        self.last_lr = learning_rate_schedule(
            self.adam.iteration, warmup=opts.warmup, cos_decay_steps=opts.cos_decay_steps,
            cos_decay_restart=opts.cos_decay_restart, cos_decay_min=opts.cos_decay_min,
            enable_restart=opts.enable_restart, alpha=opts.adam_alpha, min_alpha=opts.adam_min_alpha)
        iteration = self.counters.iteration_count + 1
        check_training_step(iteration, loss, self.grads.arrays(), "gradient")  # before Adam touches anything
        with prof.phase("optimizer"):
            self.last_grad_norm = self.adam.step(self.grads.arrays(), self.last_lr).grad_norm
        check_training_step(iteration, loss, self.lora.parameters(), "updated parameter")
        self.counters.iteration_count += 1
        self.counters.epoch_count += epochs
        self.last_loss = loss
        return loss, epochs

    def _stop_reason(self, loss: float, epochs_done: int) -> str:
        if self.convergence.converged(loss, self.adam.iteration - 1):
            return "converged (--adam-epsf / --opt-past / --opt-max-no-improvement)"
        if self.opts.epochs > 0 and epochs_done >= self.opts.epochs:
            return f"--epochs {self.opts.epochs} reached"
        return ""

    def save(self) -> list[str]:
        it = self.counters.iteration_count
        # every rank must hold the same adapters; a difference would be a bug, never silent
        self.dist.agree(f"the adapters at iteration {it}", lambda: {
            "adapters": distributed.arrays_digest(self.lora.parameters().values())})
        if not self.dist.is_root:
            return []
        written = []
        for path in ckpt_io.output_names(self.opts.checkpoint_out, it, self.opts.pattern_fn_it, self.opts.fn_latest):
            ckpt_io.save_checkpoint(path, self.checkpoint())
            written.append(path)
        return written + write_adapter(self.opts, self.model, self.lora, it)

    def checkpoint(self) -> ckpt_io.Checkpoint:
        hp = self.model.hparams
        conv = self.convergence
        return ckpt_io.Checkpoint(
            hparams=replace(hp, n_ctx_train=self.opts.ctx),
            ranks=self.lora.ranks_by_kind(),
            lora={name: (p.a.T.copy(), p.b.copy()) for name, p in self.lora.pairs.items()},
            optimizer=ckpt_io.OptimizerCheckpoint(
                iteration=self.adam.iteration, m=self.adam.m.copy(), v=self.adam.v.copy(), just_initialized=False,
                best_loss=conv.best_loss, previous_loss=conv.previous_loss,
                no_improvement_count=conv.no_improvement_count, past_loss_values=conv.past_loss_values.copy()),
            counters=ckpt_io.TrainCounters(**vars(self.counters)),
            shuffle=self.stream.state, lora_alpha=self.lora.alpha, rslora=self.lora.rslora, seed=self.watch.seed,
            best_val_loss=self.watch.best.best, evals_since_best=self.watch.best.since_best)

    def _stop_signal(self) -> signal.Signals:
        """The signal that stopped training (another rank's Ctrl-C counts as SIGINT here)."""
        return signal.Signals(self.interrupt_requested or signal.SIGINT)

    def _on_signal(self, signum, frame) -> None:
        """Ctrl-C (SIGINT) and SIGTERM (what schedulers and containers send): finish the
        iteration, save, stop; a second one aborts at once."""
        if self.interrupt_requested:
            raise KeyboardInterrupt
        self.interrupt_requested = signum
        if self.dist.size == 1:  # ranks stop together, after the exchange that tells them all
            self.interrupted = True
        print(f"\nggtune: {signal.Signals(signum).name} received, finishing this iteration and saving "
              "(send it again to abort)", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- pieces
def resolve_ranks(opts: FinetuneOptions, tied: bool, log) -> dict[str, int]:
    """Rank of each tensor kind. Kinds the adapter format cannot carry are left out by default
    (said in one line); asking for one explicitly is refused, naming a format that can."""
    carried = adapters.adapter_capabilities(opts.lora_format, tied)
    ranks, dropped = {}, []
    targets = parse_targets(opts.lora_targets) if opts.lora_targets else None
    for option, kind in RANK_OPTIONS.items():
        explicit = getattr(opts, option)
        default = default_rank(kind, opts.lora_r, targets)
        rank = default if explicit is None else explicit
        if rank > 0 and kind not in carried:
            if explicit is not None or (targets is not None and not (kind == "output" and tied)):
                if explicit is None:
                    option, explicit = "lora_targets", opts.lora_targets
                others = [f for f in adapters.formats_that_carry(kind, tied) if f != opts.lora_format]
                why = "the model has no output.weight (tied embeddings)" if not others else \
                    f"the {opts.lora_format} adapter cannot carry it; use --lora-format {others[0]}"
                raise ValueError(f"--{option.replace('_', '-')} {explicit}: {kind} cannot be trained here: {why}")
            if not (kind == "output" and tied):
                dropped.append(kind)
            rank = 0
        ranks[kind] = rank
    if dropped:
        log(f"not training {', '.join(dropped)}: the {opts.lora_format} adapter cannot carry them "
            f"(--lora-format ggla can)")
    return ranks


def write_adapter(opts: FinetuneOptions, model, lora: LoraSet, iteration: int, best: bool = False) -> list[str]:
    """The adapter files of one save (or, with ``best``, the best-validation copy)."""
    names = ([validation.best_name(opts.lora_out, opts.pattern_fn_it)] if best else
             ckpt_io.output_names(opts.lora_out, iteration, opts.pattern_fn_it, opts.fn_latest))
    alpha, tensors = adapter_alpha_and_factors(lora.alpha, opts.lora_r, lora.rslora,
                                               {name: (p.a, p.b) for name, p in lora.pairs.items()})
    for path in names:
        if opts.lora_format == "gguf":
            meta = {"ggtune.lora.rslora": True, "ggtune.lora.rslora_alpha": lora.alpha} if lora.rslora else None
            adapters.write_gguf_adapter(path, tensors, alpha=alpha, architecture=model.weights.arch.name,
                                        tied_embeddings=model.weights.tied_embeddings, metadata=meta)
        else:
            ck = {name: (a.T.copy(), b) for name, (a, b) in tensors.items()}
            adapters.write_ggla_adapter(path, ck, alpha=alpha, lora_r=opts.lora_r)
    return names


def _read_checkpoint(opts: FinetuneOptions, ranks: dict[str, int]):
    """The checkpoint to resume, or None to start fresh ('' or a file that does not exist)."""
    if not opts.checkpoint_in or not os.path.exists(opts.checkpoint_in):
        return None
    ck = ckpt_io.load_checkpoint(opts.checkpoint_in)
    if not opts.only_write_lora:
        try:
            ckpt_io.check_resume_compatible(ck, ranks, opts.opt_past)
        except ckpt_io.CheckpointError as e:
            raise ckpt_io.CheckpointError(f"{opts.checkpoint_in}: {e}") from None
    return ck


def _resolve_alpha(opts: FinetuneOptions, resumed, log) -> float:
    """--lora-alpha; when resuming, the checkpoint's own alpha unless --lora-alpha says otherwise."""
    stored = resumed.lora_alpha if resumed is not None else None
    if opts.lora_alpha is None:
        if stored is not None:
            return float(stored)
        return float(opts.lora_r)
    if stored is not None and float(opts.lora_alpha) != stored:
        log(f"note: {opts.checkpoint_in} was trained with --lora-alpha {stored:g}; continuing with "
            f"{opts.lora_alpha:g} changes the adapters' scale")
    return float(opts.lora_alpha)


def _resolve_rslora(opts: FinetuneOptions, resumed, log) -> bool:
    """--rslora; a checkpoint trained with rslora keeps its scale rule (said when the flag is missing)."""
    if resumed is not None and resumed.rslora and not opts.rslora:
        log(f"note: {opts.checkpoint_in} was trained with --rslora; continuing with its scale alpha/sqrt(r)")
        return True
    if resumed is not None and opts.rslora and not resumed.rslora:
        log(f"note: {opts.checkpoint_in} was trained with scale alpha/r; --rslora changes the adapters' scale")
    return opts.rslora


def _resolve_seed(opts: FinetuneOptions, resumed) -> int:
    """--seed; -1 is time-based for a fresh run and the checkpoint's seed on a resume."""
    if opts.seed >= 0:
        return opts.seed
    if resumed is not None and resumed.seed is not None:
        return resumed.seed
    return int(time.time())


def _lora_from_checkpoint(ck, alpha: float, rslora: bool = False) -> LoraSet:
    lora = LoraSet(alpha=alpha, rslora=rslora)
    for name, (a, b) in ck.lora.items():
        lora.add(name, a.T, b)
    return lora


def _restore_convergence(conv: Convergence, opt) -> None:
    conv.best_loss, conv.previous_loss = opt.best_loss, opt.previous_loss
    conv.no_improvement_count = opt.no_improvement_count
    conv.past_loss_values = np.array(opt.past_loss_values, np.float32)


def _load_samples(opts: FinetuneOptions, model, tokenizer, path: str):
    meta = model.weights.metadata
    template = meta.get("tokenizer.chat_template")
    return data_io.load_training_data(
        path, tokenizer, n_ctx=opts.ctx, train_format=opts.train_format, sample_start=opts.sample_start,
        escape=opts.escape, include_sample_start=opts.include_sample_start,
        overlapping_samples=opts.overlapping_samples, chat_template=template,
        bos_token=_token_text(tokenizer, tokenizer.bos_id), eos_token=_token_text(tokenizer, tokenizer.eos_id))


def _token_text(tokenizer, token_id) -> str:
    if token_id is None:
        return ""
    return tokenizer.token_to_piece(token_id, special=True).decode("utf-8", "replace")


def _apply_overrides(model, opts: FinetuneOptions) -> None:
    hp = model.hparams
    if opts.norm_rms_eps is not None:
        hp.rms_eps = opts.norm_rms_eps
    if opts.rope_freq_base is not None:
        hp.rope_freq_base = opts.rope_freq_base
    if opts.rope_freq_scale is not None:
        hp.rope_freq_scale = opts.rope_freq_scale


def _last_saved(written: list[str]) -> str:
    return f"; the last saved files are {', '.join(written[-4:])}" if written else \
        "; no save point was reached before it (--save-every N)"


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _logger(verbose: bool):
    def log(message: str) -> None:
        if verbose:
            print(message, file=sys.stderr, flush=True)
    return log


# ----------------------------------------------------------------------------- command line
def add_cli(subparsers) -> None:
    from .options import add_arguments

    parser = subparsers.add_parser(
        "finetune", help="train LoRA adapters on a GGUF model",
        description="LoRA finetuning with the options of llama.cpp's original finetune "
                    "(underscores and dashes are both accepted in flag names).")
    add_arguments(parser)
    parser.set_defaults(func=_cli_finetune)


def _cli_finetune(args) -> int:
    from dataclasses import fields

    opts = FinetuneOptions(**{f.name: getattr(args, f.name) for f in fields(FinetuneOptions)})
    if opts.n_gpu_layers:
        print("ggtune finetune: warning: --gpu-layers has no effect, ggtune trains on the CPU", file=sys.stderr)
    result = run(opts)  # input problems raise ValueError subclasses, which cli.main prints as one line
    return 128 + result.signal if result.interrupted else 0  # 130 after Ctrl-C, 143 after SIGTERM
