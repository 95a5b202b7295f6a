"""Learning-rate schedule, Adam/AdamW and the convergence tests of the original finetune.

Spec: original-finetune.md section B (ggml's ``ggml_opt_adam`` of Nov 2023).

Gradient accumulation is the caller's: with ``n_acc`` passes per optimizer step, each pass adds
``grad / n_acc`` into the gradient buffers, which are then handed to :meth:`Adam.step` once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

ADAM_EPS = 1e-8  # fixed in the original; not an option


def schedule_factor(iteration: int, *, warmup: int, cos_decay_steps: int, cos_decay_restart: float,
                    cos_decay_min: float, enable_restart: bool) -> float:
    """The schedule's factor f in [0, 1] at ``iteration`` (before the min-alpha floor).

    Linear warmup ``s / warmup`` while ``s < warmup``; then cosine decay
    ``(1-m)·½(1+cos(π·min(s,D)/D)) + m``. Without restarts the original feeds the raw iteration s
    (not s - warmup); with restarts it feeds s - warmup and each finished cycle multiplies D by
    ``cos_decay_restart`` (truncated to an integer, as the original's int64 arithmetic does)."""
    if iteration < warmup:
        return iteration / warmup
    if not enable_restart:
        return _cosine_decay(iteration, cos_decay_steps, cos_decay_min)
    step, steps = iteration - warmup, cos_decay_steps
    while step > steps:
        step -= steps
        steps = int(cos_decay_restart * steps)
    return _cosine_decay(step, steps, cos_decay_min)


def _cosine_decay(step: int, decay_steps: int, minimum: float) -> float:
    step = min(step, decay_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * step / decay_steps)) if decay_steps > 0 else 0.0
    return (1.0 - minimum) * cosine + minimum


def learning_rate_schedule(iteration: int, *, warmup: int, cos_decay_steps: int,
                           cos_decay_restart: float, cos_decay_min: float, enable_restart: bool,
                           alpha: float, min_alpha: float) -> float:
    """Learning rate at ``iteration``: ``alpha · (m0 + f·(1 - m0))`` with ``m0 = min_alpha / alpha``
    and f from :func:`schedule_factor`."""
    if alpha == 0.0:
        return 0.0
    f = schedule_factor(iteration, warmup=warmup, cos_decay_steps=cos_decay_steps,
                        cos_decay_restart=cos_decay_restart, cos_decay_min=cos_decay_min,
                        enable_restart=enable_restart)
    m0 = min_alpha / alpha
    return alpha * (m0 + f * (1.0 - m0))


def ggml_n_dims(shape: tuple[int, ...]) -> int:
    """ggml's ``ggml_n_dims`` for a numpy shape: trailing ggml dims of size 1 (leading numpy dims)
    do not count, so a norm adapter's lora_b, numpy (1, r), is 1-dimensional and is not decayed."""
    dims = list(shape)
    while len(dims) > 1 and dims[0] == 1:
        dims.pop(0)
    return max(1, len(dims))


@dataclass
class AdamState:
    """What a checkpoint keeps of Adam: the global iteration t and the moments, each one flat
    float32 vector [nx] over the parameters in the optimizer's parameter order."""
    iteration: int
    m: np.ndarray  # [nx] float32
    v: np.ndarray  # [nx] float32


@dataclass
class StepInfo:
    grad_norm: float  # ||g||2 over all parameters, before clipping
    clip_scale: float  # c = min(1, gclip / ||g||2), 1 when clipping is off


class Adam:
    """Adam with AdamW decoupled decay over a dict of float32 arrays, updated in place.

    At global iteration t (1 for the first step), with clip factor c and learning rate lr:
        g  = c · grad
        m  = b1·m + (1-b1)·g;   v = b2·v + (1-b2)·g²
        x  = x·(1 - pd) - lr · (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + 1e-8)
    where pd = decay·lr for parameters with ggml_n_dims >= decay_min_ndim, else 0."""

    def __init__(self, params: dict[str, np.ndarray], *, beta1: float = 0.9, beta2: float = 0.999,
                 decay: float = 0.1, decay_min_ndim: int = 2, gclip: float = 1.0):
        for name, p in params.items():
            if not (isinstance(p, np.ndarray) and p.dtype == np.float32 and p.flags.c_contiguous):
                raise ValueError(f"Adam parameter {name!r}: expected a C-contiguous float32 numpy array")
        self.params = params
        self.beta1, self.beta2 = beta1, beta2
        self.decay, self.decay_min_ndim, self.gclip = decay, decay_min_ndim, gclip
        self.offsets = _offsets(params)
        self.parameter_count = self.offsets[-1] if self.offsets else 0
        self.iteration = 0
        self.m = np.zeros(self.parameter_count, np.float32)  # [nx]
        self.v = np.zeros(self.parameter_count, np.float32)  # [nx]

    def step(self, grads: dict[str, np.ndarray], lr: float) -> StepInfo:
        """One update of every parameter from ``grads`` (same names and shapes; not modified)."""
        self._check_grads(grads)
        grad_norm = math.sqrt(sum(float(np.dot(g.ravel().astype(np.float64), g.ravel().astype(np.float64)))
                                  for g in grads.values()))
        clip = self.gclip / grad_norm if 0.0 < self.gclip < grad_norm else 1.0
        self.iteration += 1
        t = self.iteration
        b1, b2 = self.beta1, self.beta2
        step_size = np.float32(lr / (1.0 - b1 ** t))
        v_correction = np.float32(1.0 / (1.0 - b2 ** t))
        for (name, x), lo, hi in zip(self.params.items(), self.offsets[:-1], self.offsets[1:]):
            g = grads[name].reshape(-1) * np.float32(clip)
            m, v = self.m[lo:hi], self.v[lo:hi]
            m *= np.float32(b1)
            m += np.float32(1.0 - b1) * g
            v *= np.float32(b2)
            v += np.float32(1.0 - b2) * g * g
            update = step_size * m / (np.sqrt(v * v_correction) + np.float32(ADAM_EPS))
            flat = x.reshape(-1)
            if ggml_n_dims(x.shape) >= self.decay_min_ndim and self.decay != 0.0:
                flat *= np.float32(1.0 - self.decay * lr)
            flat -= update
        return StepInfo(grad_norm=grad_norm, clip_scale=clip)

    def export_state(self) -> AdamState:
        return AdamState(iteration=self.iteration, m=self.m.copy(), v=self.v.copy())

    def load_state(self, state: AdamState) -> None:
        for label, vec in (("first moments", state.m), ("second moments", state.v)):
            if np.shape(vec) != (self.parameter_count,):
                raise ValueError(f"Adam state: {label} have shape {np.shape(vec)}, expected "
                                 f"({self.parameter_count},) for these parameters")
        self.iteration = int(state.iteration)
        self.m = np.array(state.m, np.float32)
        self.v = np.array(state.v, np.float32)

    def _check_grads(self, grads: dict[str, np.ndarray]) -> None:
        if grads.keys() != self.params.keys():
            missing = sorted(self.params.keys() - grads.keys())
            extra = sorted(grads.keys() - self.params.keys())
            raise ValueError(f"Adam.step grads: missing {missing}, unexpected {extra}")
        for name, g in grads.items():
            if g.shape != self.params[name].shape:
                raise ValueError(f"Adam.step grads[{name!r}]: shape {g.shape}, expected "
                                 f"{self.params[name].shape}")


def _offsets(params: dict[str, np.ndarray]) -> list[int]:
    offsets = [0]
    for p in params.values():
        offsets.append(offsets[-1] + p.size)
    return offsets


@dataclass
class Convergence:
    """The original's stopping tests after each optimizer step (all off by default):
    relative loss change below ``epsf``; the ``past``-step delta test; ``max_no_improvement``.
    Its state goes into the checkpoint (best/previous loss, no-improvement count, past losses)."""
    past: int = 0
    delta: float = 1e-5
    max_no_improvement: int = 0
    epsf: float = 0.0
    best_loss: float = 0.0
    previous_loss: float = 0.0
    no_improvement_count: int = 0
    past_loss_values: np.ndarray = field(default=None)  # [past] float32

    def __post_init__(self):
        if self.past_loss_values is None:
            self.past_loss_values = np.zeros(self.past, np.float32)

    def start(self, loss: float) -> None:
        """Before the first step of a fresh run, as ggml does with the initial loss."""
        self.best_loss = self.previous_loss = loss
        self.no_improvement_count = 0
        if self.past > 0:
            self.past_loss_values[:] = loss

    def converged(self, loss: float, step_index: int) -> bool:
        """Records ``loss`` after the optimizer step numbered ``step_index`` (0-based, global);
        True when a test says stop."""
        if self.epsf > 0.0 and loss != 0.0 and abs(loss - self.previous_loss) / loss < self.epsf:
            return True
        if self.past > 0:
            slot = step_index % self.past
            if step_index >= self.past and loss != 0.0:
                if abs((self.past_loss_values[slot] - loss) / loss) < self.delta:
                    return True
            self.past_loss_values[slot] = loss
        if self.max_no_improvement > 0:
            if loss < self.best_loss:
                self.best_loss, self.no_improvement_count = loss, 0
            else:
                self.no_improvement_count += 1
                if self.no_improvement_count >= self.max_no_improvement:
                    return True
        self.previous_loss = loss
        return False
