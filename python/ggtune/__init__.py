"""ggtune: fast CPU LoRA finetuning of LLaMA-family GGUF models."""

import os

# OpenMP threads that spin for long while waiting steal the core from the thread they wait for as
# soon as anything else runs on the machine (measured: a 0.4 ms kernel took 15 ms with libgomp's
# default spinning on a busy 2-core machine), while threads that sleep at once pay a wake-up on every
# kernel (a short add + gemm pair: 0.60 ms sleeping vs 0.32 ms with a brief spin, quiet machine).
# A brief spin, then sleep, keeps both cases near their best. libgomp reads these when the extension
# loads it, so they must be set before the import below; a user's own settings win.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("GOMP_SPINCOUNT", "20000")

from . import _core  # noqa: E402
from .trainer import FinetuneResult, finetune  # noqa: E402
from .model import load_model  # noqa: E402

__version__ = "0.1.0"

__all__ = ["_core", "__version__", "finetune", "FinetuneResult", "load_model"]
