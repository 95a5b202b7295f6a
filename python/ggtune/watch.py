"""Watching a training run: the metrics log line of each iteration, evaluation when it is due, and
the best validation loss (--early-stop, the BEST adapter). trainer.py's loop calls it."""

from __future__ import annotations

import time

from . import validation
from .metrics import MetricsLog, resolve_metrics_path


class RunWatch:
    """What the training loop reports and watches besides training: the metrics log, evaluation
    and the best validation loss (for --early-stop and the BEST adapter)."""

    def __init__(self, opts, evaluator, resumed, seed: int, n_samples: int, writes_files: bool = True):
        """writes_files: False on the MPI ranks but 0, which evaluate alike and write nothing."""
        self.opts, self.evaluator, self.seed, self.n_samples = opts, evaluator, seed, n_samples
        path = resolve_metrics_path(opts.metrics, opts.lora_out, opts.pattern_fn_it) if writes_files else ""
        self.metrics = MetricsLog(path, append=resumed is not None)
        self.best = validation.BestTracker(opts.early_stop, resumed.best_val_loss if resumed else None,
                                           resumed.evals_since_best if resumed else 0)
        self.writes_best = writes_files and evaluator is not None and bool(opts.lora_out)
        self.last = None  # the latest ValidationResult
        self.started = time.perf_counter()

    def baseline(self, fresh: bool):
        """Before a fresh run's first step: the held-out loss of the untrained adapters (B = 0, the
        base model), logged as iteration 0 so the curve starts where training does. Not a candidate
        for BEST: that is always a trained adapter."""
        if self.evaluator is None or not fresh:
            return None
        self.last = self.evaluator.evaluate()
        self.metrics.write({"iteration": 0, "elapsed": round(time.perf_counter() - self.started, 3),
                            "val_loss": self.last.loss, "val_ppl": self.last.perplexity})
        return self.last

    def evaluate_if_due(self, iteration: int, last_step: bool):
        if self.evaluator is None:
            return None
        every = self.opts.eval_every
        if not ((every > 0 and iteration % every == 0) or last_step):
            return None
        self.last = self.evaluator.evaluate()
        return self.last

    def log_iteration(self, state, loss: float, tokens_per_s: float, val) -> None:
        record = {"iteration": state.counters.iteration_count,
                  "epoch": round(state.counters.sample_count / max(self.n_samples, 1), 4),
                  "samples": state.counters.sample_count,
                  "loss": loss, "lr": state.last_lr, "grad_norm": state.last_grad_norm,
                  "tokens_per_s": round(tokens_per_s, 2), "elapsed": round(time.perf_counter() - self.started, 3)}
        if val is not None:
            record.update(val_loss=val.loss, val_ppl=val.perplexity)
        self.metrics.write(record)

    def stop_reason(self) -> str:
        if self.best.should_stop and self.last is not None:
            return (f"--early-stop {self.opts.early_stop}: no better validation loss in "
                    f"{self.best.since_best} evaluations (best {self.best.best:.4f})")
        return ""
