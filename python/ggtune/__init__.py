"""ggtune: fast CPU LoRA finetuning of LLaMA-family GGUF models."""

from . import _core
from .model import load_model

__version__ = "0.1.0"

__all__ = ["_core", "__version__", "load_model"]
