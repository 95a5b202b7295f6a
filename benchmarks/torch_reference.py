"""The PyTorch + PEFT side of the Gemma 3 quality benchmark (issue 11), callable from ggtune's side.

The run: LoRA rank 4, alpha 4 on q/k/v/o/gate/up/down of every layer of Gemma 3 270M (transformers
loads the GGUF, dequantized to float32), ctx 128, batch 8, Adam lr 1e-3 (betas 0.9/0.999, no weight
decay, no warm-up, no decay of the rate), global gradient-norm clip 1.0 (ggtune's default), 60
iterations on the first 80% by characters of the licence corpus of benchmarks/finetune_quality.py
(GPL-3 + LGPL-3 + Apache-2.0 + MPL-2.0). Held-out score: mean cross-entropy of the last 20% by
characters, tokenized without BOS, in non-overlapping 128-token windows (127 predictions each, no
BOS), before and after training. Reported: both scores, the losses, tokens/s of the timed iterations
and the process's peak RSS.

API (for benchmarks/finetune_quality.py or bench_finetune.py):

    split_corpus() -> (train_text, heldout_text)          # the 80/20 cut by characters
    write_batches(model_path, train_text, out_npz, ctx=128, batch=8, count=60, seed=1) -> out_npz
        # the batches ggtune.finetune(seed=1) draws (ggtune's tokenizer and BatchStream), for PyTorch
    run_torch_lora(model_path, batches_npz, heldout_tokens, **TorchRun fields) -> dict
        # in this process: keys before, after, losses, tokens_per_second, seconds, peak_rss, n_params, versions
    run_torch_child(model_path, batches_npz, heldout_tokens, **fields) -> dict
        # the same in a fresh interpreter (so peak RSS is PyTorch's alone), via this file's --child

Standalone (writes the batches with ggtune's tokenizer, then runs the child):

    PYTHONPATH=python python benchmarks/torch_reference.py [--model GGUF] [--iterations 60] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
GEMMA3_PATH = os.path.join(os.path.expanduser("~"), ".cache", "ggtune", "gemma-3-270m-q4_k_m.gguf")
TRAIN_FRACTION = 0.8
LORA_TARGETS_HF = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
RESULT_TAG = "TORCH_RESULT "
SEED = 1


@dataclass
class TorchRun:
    ctx: int = 128
    rank: int = 4
    alpha: float = 4.0
    lr: float = 1e-3
    grad_clip: float = 1.0  # ggtune's adam_gclip default
    threads: int = 2
    warmup: int = 0  # untimed iterations at the start (they still train)
    eval_batch: int = 4  # held-out windows per forward


def corpus() -> str:
    """The licence corpus, exactly as benchmarks/finetune_quality.py reads it."""
    sys.path.insert(0, HERE)
    from finetune_quality import corpus as quality_corpus

    return quality_corpus()


def split_corpus(text: str | None = None, fraction: float = TRAIN_FRACTION) -> tuple[str, str]:
    """(first `fraction` of the characters, the rest)."""
    text = corpus() if text is None else text
    cut = int(len(text) * fraction)
    return text[:cut], text[cut:]


def heldout_text() -> str:
    return split_corpus()[1]


def windows(tokens: list[int], ctx: int) -> list[list[int]]:
    """The non-overlapping ctx-token windows the held-out score averages over (a last one of at least 2)."""
    return [list(tokens[s:s + ctx]) for s in range(0, len(tokens), ctx) if len(tokens[s:s + ctx]) >= 2]


# ----------------------------------------------------------------------------- data (ggtune's sampling)
def write_batches(model_path: str, train_text: str, out_npz: str, ctx: int = 128, batch: int = 8, count: int = 60,
                  seed: int = SEED, start_with_bos: bool = True) -> str:
    """The first `count` batches ggtune.finetune(seed=seed) trains on, saved as npz (inputs, targets
    int32 [count, batch, ctx]; target < 0: no loss), drawn by ggtune's own tokenizer and BatchStream."""
    from ggtune import data as data_io
    from ggtune.tokenizer import Tokenizer

    tok = Tokenizer.from_gguf(model_path)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "train.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write(train_text)
        samples = data_io.load_training_data(path, tok, n_ctx=ctx)
    stream = data_io.BatchStream(samples, data_io.BatchOptions(n_ctx=ctx, n_batch=batch, start_with_bos=start_with_bos),
                                 bos_id=tok.bos_id, eos_id=tok.eos_id, seed=seed)
    batches = [stream.next_batch() for _ in range(count)]
    np.savez(out_npz, inputs=np.stack([b.inputs for b in batches]).astype(np.int32),
             targets=np.stack([b.targets for b in batches]).astype(np.int32))
    return out_npz


def heldout_tokens(model_path: str, text: str | None = None) -> list[int]:
    """The held-out text tokenized without BOS by ggtune's tokenizer."""
    from ggtune.tokenizer import Tokenizer

    return Tokenizer.from_gguf(model_path).tokenize(heldout_text() if text is None else text, add_bos=False)


# ----------------------------------------------------------------------------- the PyTorch run
def load_peft_model(model_path: str, run: TorchRun):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF loader's per-tensor progress bar
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(os.path.abspath(model_path)),
                                                 gguf_file=os.path.basename(model_path), dtype=torch.float32)
    model.config.use_cache = False
    config = LoraConfig(r=run.rank, lora_alpha=run.alpha, lora_dropout=0.0, bias="none",
                        target_modules=list(LORA_TARGETS_HF), task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def heldout_cross_entropy(model, tokens: list[int], ctx: int, eval_batch: int) -> float:
    """Mean next-token cross-entropy over non-overlapping ctx-token windows (no BOS added)."""
    import torch
    import torch.nn.functional as F

    parts = windows(tokens, ctx)
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for length in sorted({len(w) for w in parts}):
            same = [w for w in parts if len(w) == length]
            for i in range(0, len(same), eval_batch):
                ids = torch.tensor(same[i:i + eval_batch], dtype=torch.long)
                logits = model(input_ids=ids).logits[:, :-1].float()
                loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum")
                total += float(loss)
                count += ids[:, 1:].numel()
    return total / count


def run_torch_lora(model_path: str, batches_npz: str, heldout: list[int], **fields) -> dict:
    """Trains on every batch of `batches_npz` (one optimizer step each) and scores `heldout` before
    and after; see the module docstring."""
    import torch
    import torch.nn.functional as F
    from ggtune.memory import peak_rss

    run = TorchRun(**fields)
    torch.set_num_threads(run.threads)
    torch.manual_seed(SEED)
    model = load_peft_model(model_path, run)
    data = np.load(batches_npz)
    inputs = torch.from_numpy(data["inputs"].astype(np.int64))
    targets = torch.from_numpy(data["targets"].astype(np.int64))
    targets[targets < 0] = -100
    before = heldout_cross_entropy(model, heldout, run.ctx, run.eval_batch)
    print(f"torch: held-out cross-entropy before {before:.4f}", file=sys.stderr, flush=True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=run.lr, betas=(0.9, 0.999), eps=1e-8)
    model.train()
    losses, seconds = [], []
    for i in range(len(inputs)):
        start = time.perf_counter()
        logits = model(input_ids=inputs[i]).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets[i].flatten(), ignore_index=-100)
        loss.backward()
        if run.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, run.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - start)
        losses.append(float(loss.detach()))
        print(f"torch: iteration {i + 1}/{len(inputs)} loss {losses[-1]:.4f} "
              f"({inputs[i].numel() / seconds[-1]:.1f} tokens/s)", file=sys.stderr, flush=True)
    after = heldout_cross_entropy(model, heldout, run.ctx, run.eval_batch)
    timed = seconds[run.warmup:]
    tokens = inputs[0].numel()
    return dict(before=before, after=after, losses=losses, seconds=sum(seconds),
                tokens_per_second=len(timed) * tokens / sum(timed), peak_rss=peak_rss(),
                n_params=sum(p.numel() for p in params), run=asdict(run), versions=_versions())


def _versions() -> str:
    import torch
    from importlib.metadata import version

    return f"torch {torch.__version__}, transformers {version('transformers')}, peft {version('peft')}"


def run_torch_child(model_path: str, batches_npz: str, heldout: list[int], **fields) -> dict:
    """run_torch_lora in a fresh interpreter; its progress goes to this process's stderr."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(dict(model=model_path, batches=batches_npz, heldout=list(map(int, heldout)), fields=fields), f)
    try:
        done = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", f.name],
                              stdout=subprocess.PIPE, text=True)
    finally:
        os.unlink(f.name)
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    raise RuntimeError(f"torch_reference child failed (exit {done.returncode})")


def _child(params_path: str) -> None:
    with open(params_path) as f:
        p = json.load(f)
    result = run_torch_lora(p["model"], p["batches"], p["heldout"], **p["fields"])
    print(RESULT_TAG + json.dumps(result), flush=True)


def print_result(label: str, r: dict) -> None:
    print(f"{label}: held-out cross-entropy {r['before']:.4f} -> {r['after']:.4f} (drop {r['before'] - r['after']:.4f})"
          f", {r['tokens_per_second']:.1f} tokens/s, peak RSS {r['peak_rss'] / 2**30:.2f} GiB, "
          f"{r['seconds']:.0f} s training; {r['versions']}", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=GEMMA3_PATH)
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-start-with-bos", dest="start_with_bos", action="store_false",
                        help="rows start with their text, as ggtune finetune --no-start-with-bos draws them")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child)
        return
    train_text, held_text = split_corpus()
    heldout = heldout_tokens(args.model, held_text)
    print(f"corpus: {len(train_text)} training characters, {len(held_text)} held-out characters "
          f"({len(heldout)} tokens)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        batches = write_batches(args.model, train_text, os.path.join(tmp, "batches.npz"), count=args.iterations,
                                start_with_bos=args.start_with_bos)
        result = run_torch_child(args.model, batches, heldout, threads=args.threads)
    print_result("PyTorch+peft float32", result)


if __name__ == "__main__":
    main()
