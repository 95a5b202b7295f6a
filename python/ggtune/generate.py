"""Text generation with a KV cache, and the `ggtune generate` command.

Sampling follows llama.cpp's default chain order: top-k, then top-p (on the untempered
distribution), then temperature, then a draw; temperature <= 0 means greedy.
"""

from __future__ import annotations

import codecs
import sys
from typing import Callable, Optional, Sequence

import numpy as np

from .model import Model


def sample_next(logits: np.ndarray, rng: np.random.Generator, temp: float = 0.8, top_k: int = 40,
                top_p: float = 0.95) -> int:
    """One token id from logits f32 [V]. top_k <= 0 and top_p >= 1 disable those filters."""
    if temp <= 0:
        return int(np.argmax(logits))
    ids = np.argsort(-logits, kind="stable")
    if top_k > 0:
        ids = ids[:top_k]
    kept = logits[ids].astype(np.float64)
    if top_p < 1.0:
        p = np.exp(kept - kept[0])
        p /= p.sum()
        # the smallest prefix whose mass reaches top_p (at least one token)
        ids = ids[: int(np.searchsorted(np.cumsum(p), top_p)) + 1]
        kept = kept[: len(ids)]
    p = np.exp((kept - kept[0]) / temp)
    return int(ids[rng.choice(len(ids), p=p / p.sum())])


def generate(model: Model, prompt: Sequence[int], n_predict: int = 128, *, temp: float = 0.8,
             top_k: int = 40, top_p: float = 0.95, seed: Optional[int] = None,
             on_token: Optional[Callable[[int], None]] = None) -> list[int]:
    """Up to n_predict new token ids after `prompt`, stopping at an end-of-generation token.

    The prompt is processed in one batch, then one token per step through the KV cache.
    """
    if not prompt:
        raise ValueError("prompt: need at least one token")
    n_ctx = model.hparams.n_ctx_train
    if len(prompt) >= n_ctx:
        raise ValueError(f"prompt: {len(prompt)} tokens leave no room in the model's context of {n_ctx}")
    n_predict = min(n_predict, n_ctx - len(prompt))
    rng = np.random.default_rng(seed)
    cache = model.new_cache(len(prompt) + n_predict)
    eog = model.tokenizer.eog_ids
    step = np.asarray(prompt, dtype=np.int32)[None, :]
    out: list[int] = []
    while len(out) < n_predict:
        h = model.hidden(step, cache)
        token = sample_next(model.output_logits(h[-1:])[0], rng, temp, top_k, top_p)
        if token in eog:
            break
        out.append(token)
        if on_token:
            on_token(token)
        step = np.array([[token]], dtype=np.int32)
    return out


def chat_prompt(model: Model, user_text: str) -> str:
    """The user's message wrapped by the model's chat template, ready for the assistant's answer."""
    from .chat import ChatTemplateError, render_chat

    template = model.weights.metadata.get("tokenizer.chat_template")
    if not template:
        raise ChatTemplateError(f"{model.weights.path}: the model has no tokenizer.chat_template for --chat")
    tok = model.tokenizer
    piece = lambda i: tok.token_to_piece(i, special=True).decode("utf-8") if i is not None else ""  # noqa: E731
    return render_chat(template, [{"role": "user", "content": user_text}], add_generation_prompt=True,
                       bos_token=piece(tok.bos_id), eos_token=piece(tok.eos_id))


class TextStream:
    """Writes generated tokens' text as soon as it is valid UTF-8 (a character may span tokens)."""

    def __init__(self, model: Model, out=None):
        self.tokenizer = model.tokenizer
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.out = out or sys.stdout

    def __call__(self, token: int) -> None:
        self.out.write(self.decoder.decode(self.tokenizer.token_to_piece(token)))
        self.out.flush()

    def close(self) -> None:
        self.out.write(self.decoder.decode(b"", final=True) + "\n")
        self.out.flush()


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate text from a prompt, streamed to stdout")
    p.add_argument("--model", "-m", required=True, help="GGUF model (llama, qwen2, qwen3 or gemma3)")
    p.add_argument("--lora", action="append", default=[], help="GGUF LoRA adapter (repeatable)")
    p.add_argument("--lora-scale", type=float, action="append", default=[],
                   help="scale of the matching --lora (default 1.0)")
    p.add_argument("--prompt", "-p", required=True, help="prompt text")
    p.add_argument("--n-predict", "-n", type=int, default=128, help="tokens to generate (default 128)")
    p.add_argument("--temp", type=float, default=0.8, help="temperature; <= 0 is greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=40, help="keep the k most likely tokens; 0 keeps all (default 40)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus mass to keep (default 0.95)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt with the model's chat template")
    p.add_argument("--threads", "-t", type=int, default=None, help="kernel threads (default: all cores)")
    p.set_defaults(func=run)


def run(args) -> int:
    from .cli import load_model_from_args

    model = load_model_from_args(args)
    text = chat_prompt(model, args.prompt) if args.chat else args.prompt
    # a chat prompt carries the template's special tokens as text: parse them
    prompt = model.tokenize(text, special=args.chat)
    if not args.chat:
        sys.stdout.write(args.prompt)
    stream = TextStream(model)
    generate(model, prompt, args.n_predict, temp=args.temp, top_k=args.top_k, top_p=args.top_p,
             seed=args.seed, on_token=stream)
    stream.close()
    return 0
