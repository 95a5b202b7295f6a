"""ggtune: fast CPU LoRA finetuning of LLaMA-family GGUF models."""

import os

# OpenMP threads that spin while waiting steal the core from the thread they wait for as soon
# as anything else runs on the machine (measured: a 0.4 ms kernel took 15 ms with two spinning
# threads on a busy 2-core machine). Sleeping waits cost microseconds per kernel instead.
# libgomp reads this when the extension loads it, so it must be set before the import below.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import _core  # noqa: E402
from .trainer import FinetuneResult, finetune  # noqa: E402
from .model import load_model  # noqa: E402

__version__ = "0.1.0"

__all__ = ["_core", "__version__", "finetune", "FinetuneResult", "load_model"]
