"""LoRA finetuning speed and memory: ggtune beside PyTorch + transformers + peft, same run.

    PYTHONPATH=python python benchmarks/bench_finetune.py [--threads 2] [--warmup 2] [--iters 8] [--rounds 1]
        [--keep-layers N] [--no-torch] [--no-thread-scaling] [--no-profile] [--no-main] [--scale] [--ctx-sweep]
        [--workdir DIR]

Main run: SmolLM2-135M-Instruct Q4_1, ctx 128, batch 8, LoRA rank 4 (alpha 4) on the seven
attention/FFN matrices of every layer, Adam(W) lr 1e-3, `--warmup` untimed then `--iters` timed
iterations. Data: the GPL-3, LGPL-3, Apache-2.0 and MPL-2.0 texts of /usr/share/common-licenses,
tokenized with the model's tokenizer (ggtune's reading of the GGUF vocabulary). Every system
runs in its own subprocess, one after the other, and reports its own peak RSS
(VmHWM of /proc/self/status, which counts the resident pages of a memory-mapped model).
With --rounds N the three systems run in turn N times and each one's best round is compared, so
a change of the machine's load during the run does not favour whichever system ran in the quiet.

ggtune trains with `ggtune.finetune()`'s defaults (gradient checkpointing, precision auto, as many
layers keeping their compact activations as the default memory budget has room for; the row shows
how many), and with --keep-layers N also with `keep_layers=N` (N = 30: every layer keeps them). PyTorch 2.13
loads the same GGUF through transformers (dequantized to float32), wraps it with peft's
LoraConfig(r=4, lora_alpha=4, the same seven targets) and trains on exactly the batches ggtune
draws (same sample list, same shuffle seed, written to a file by this parent process) in float32
and again under torch.autocast(bfloat16). The PyTorch side is skipped with one line when
`import torch, transformers, peft` fails.

Thread scaling: ggtune (checkpointing) also trains on 1 thread, taking turns with --threads runs, and
the script prints tokens/s at 1 and N threads and the parallel efficiency tokens/s(N) / (N tokens/s(1)).

--scale writes random Q4_0 models with TinyLlama-1.1B and Llama-2-7B shapes (scale_models.py) and
trains each at ctx 512, batch 1 for 2 iterations. --ctx-sweep trains SmolLM2 at ctx 128 .. 2048
with ctx·batch = 1024 tokens per iteration where possible.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
LICENCES = ("GPL-3", "LGPL-3", "Apache-2.0", "MPL-2.0")
LORA_TARGETS_HF = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# ggtune's rank options for everything but the seven attention/FFN matrices, set to 0
NOT_TRAINED = dict(rank_att_norm=0, rank_ffn_norm=0, rank_out_norm=0, rank_tok_embd=0, rank_out=0)
SEED = 1
RESULT_TAG = "BENCH_RESULT "


def peak_rss_bytes() -> int:
    from ggtune.memory import peak_rss  # VmHWM: ru_maxrss would count this parent's peak too

    return peak_rss()


# ----------------------------------------------------------------------------- children
def child_ggtune(p: dict) -> dict:
    """One ggtune.finetune() run; tokens/s over the iterations after the warm-up ones."""
    import ggtune

    out = io.StringIO()
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stderr(out):
        result = ggtune.finetune(
            p["model"], p["data"], lora_out=os.path.join(tmp, "lora.gguf"), checkpoint_in="", checkpoint_out="",
            ctx=p["ctx"], batch=p["batch"], threads=p["threads"], lora_r=4, lora_alpha=4.0, **NOT_TRAINED,
            adam_iter=p["warmup"] + p["iters"], adam_alpha=1e-3, warmup=0, seed=SEED, save_every=0,
            keep_layers=p.get("keep_layers"), profile=p.get("profile", False), verbose=p.get("profile", False))
    timed = result.tokens_per_second[p["warmup"]:]
    tokens = p["ctx"] * p["batch"]
    seconds = sum(tokens / tps for tps in timed)
    return dict(tokens_per_second=len(timed) * tokens / seconds, per_iteration=result.tokens_per_second,
                losses=result.losses, peak_rss=peak_rss_bytes(), plan=result.memory_plan_bytes,
                kept_layers=result.kept_layers,
                log=out.getvalue() if p.get("profile") else "")


def child_torch(p: dict) -> dict:
    """The same batches through transformers + peft, float32 or bfloat16 autocast."""
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.set_num_threads(p["threads"])
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(p["model"]), gguf_file=os.path.basename(p["model"]),
                                                 dtype=torch.float32)
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=4, lora_dropout=0.0, bias="none",
                                             target_modules=list(LORA_TARGETS_HF), task_type="CAUSAL_LM"))
    model.train()
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.1)
    data = np.load(p["batches"])
    inputs = torch.from_numpy(data["inputs"].astype(np.int64))    # [N, B, S]
    targets = torch.from_numpy(data["targets"].astype(np.int64))  # [N, B, S], < 0: no loss
    targets[targets < 0] = -100
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if p["mode"] == "bf16" else contextlib.nullcontext()

    def step(i: int) -> float:
        with autocast:
            logits = model(input_ids=inputs[i]).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets[i].flatten(), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)

    losses, per_iteration = [], []
    tokens = inputs.shape[1] * inputs.shape[2]
    for i in range(p["warmup"] + p["iters"]):
        start = time.perf_counter()
        losses.append(step(i))
        per_iteration.append(tokens / (time.perf_counter() - start))
    timed = per_iteration[p["warmup"]:]
    seconds = sum(tokens / tps for tps in timed)
    return dict(tokens_per_second=len(timed) * tokens / seconds, per_iteration=per_iteration, losses=losses,
                peak_rss=peak_rss_bytes(), plan=None, n_params=sum(q.numel() for q in params), log="",
                versions=f"torch {torch.__version__}, transformers {_version('transformers')}, "
                         f"peft {_version('peft')}")


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def run_child(kind: str, params: dict) -> dict:
    """Runs this file as `--child kind` in a fresh interpreter; returns its result dict."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, json.dumps(params)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    raise RuntimeError(f"{kind} child failed (exit {done.returncode}):\n{done.stderr[-3000:]}")


# ----------------------------------------------------------------------------- data
def licences_text(workdir: str) -> str:
    path = os.path.join(workdir, "licences.txt")
    with open(path, "w", encoding="utf-8") as out:
        for name in LICENCES:
            with open(os.path.join("/usr/share/common-licenses", name), encoding="utf-8") as f:
                out.write(f.read())
    return path


def write_batches(model_path: str, data_path: str, ctx: int, batch: int, count: int, out: str) -> str:
    """The first `count` batches ggtune.finetune(seed=SEED) trains on, saved as npz for PyTorch."""
    import ggtune
    from ggtune import data as data_io

    model = ggtune.load_model(model_path)
    tok = model.tokenizer
    samples = data_io.load_training_data(data_path, tok, n_ctx=ctx)
    stream = data_io.BatchStream(samples, data_io.BatchOptions(n_ctx=ctx, n_batch=batch),
                                 bos_id=tok.bos_id, eos_id=tok.eos_id, seed=SEED)
    batches = [stream.next_batch() for _ in range(count)]
    np.savez(out, inputs=np.stack([b.inputs for b in batches]), targets=np.stack([b.targets for b in batches]))
    return out


def torch_available() -> str:
    """'' when torch, transformers and peft import in a fresh interpreter, else why not."""
    done = subprocess.run([sys.executable, "-c", "import torch, transformers, peft"], capture_output=True, text=True)
    return "" if done.returncode == 0 else (done.stderr.strip().splitlines() or ["import failed"])[-1]


# ----------------------------------------------------------------------------- report
def mib(n: float) -> str:
    return f"{n / 2**20:7.0f} MiB"


def print_row(label: str, r: dict) -> None:
    plan = (f"  (memory plan {mib(r['plan']).strip()}, {r['kept_layers']} layers kept)" if r.get("plan") else "")
    print(f"  {label:<34} {r['tokens_per_second']:8.1f} tokens/s   peak RSS {mib(r['peak_rss'])}{plan}"
          f"   [load average {os.getloadavg()[0]:.1f}]", flush=True)


def print_profile(log: str, n_lines: int = 14) -> None:
    """The last iteration's profile block from ggtune's --profile output, top lines only."""
    blocks = log.split("profile of iteration")
    if len(blocks) < 2:
        print("  (no profile output found)")
        return
    lines = ("profile of iteration" + blocks[-1]).strip().splitlines()
    for line in lines[:n_lines]:
        print("  " + line)


def systems_of(args, with_torch: bool) -> list[tuple[str, str]]:
    out = [("ggtune", "ggtune (defaults)")]
    if args.keep_layers is not None:
        out.append(("ggtune_keep", f"ggtune (--keep-layers {args.keep_layers})"))
    if with_torch:
        out += [("f32", "PyTorch+peft float32"), ("bf16", "PyTorch+peft bf16 autocast")]
    return out


def main_run(args, model: str, data: str) -> None:
    base = dict(model=model, data=data, ctx=128, batch=8, threads=args.threads, warmup=args.warmup, iters=args.iters)
    print(f"main run: {os.path.basename(model)}, ctx 128, batch 8, rank 4 on q/k/v/o/gate/up/down, "
          f"{args.threads} threads, {args.warmup} warm-up + {args.iters} timed iterations, "
          f"{args.rounds} round(s) of the systems in turn", flush=True)
    why_not = "" if args.torch else "--no-torch given"
    why_not = why_not or torch_available()
    systems = systems_of(args, with_torch=not why_not)
    ggtune_keys = [key for key, _ in systems if key.startswith("ggtune")]
    if why_not:
        print(f"  PyTorch side skipped: {why_not}")
    else:
        base["batches"] = write_batches(model, data, 128, 8, args.warmup + args.iters,
                                        os.path.join(args.workdir, "batches.npz"))
    best = {}
    for round_ in range(args.rounds):  # in turn, so a change of the machine's load hits every system
        for key, label in systems:
            if key.startswith("ggtune"):
                r = run_child("ggtune", dict(base, keep_layers=args.keep_layers if key == "ggtune_keep" else None))
            else:
                r = run_child("torch", dict(base, mode=key))
            print_row(f"{label} [{round_ + 1}]", r)
            if key not in best or r["tokens_per_second"] > best[key]["tokens_per_second"]:
                best[key] = r
    if not why_not:
        print(f"  ({best['f32']['versions']}; PyTorch LoRA parameters {best['f32']['n_params']:,})")
        for key in ggtune_keys:
            for mode, target in (("f32", 3.0), ("bf16", 2.0)):  # issue 12's targets
                ratio = best[key]["tokens_per_second"] / best[mode]["tokens_per_second"]
                mem = best[key]["peak_rss"] / best[mode]["peak_rss"]
                print(f"  {key} / PyTorch {mode:<5}: tokens/s x{ratio:.2f} (best of {args.rounds}; target >= "
                      f"{target:.0f}x: {'met' if ratio >= target else 'NOT met'}), peak RSS x{mem:.2f}")
        print("  first/last loss: " + ", ".join(f"{key} {best[key]['losses'][0]:.4f}/{best[key]['losses'][-1]:.4f}"
                                                for key, _ in systems))
    for key in ggtune_keys:
        g = best[key]
        print(f"  peak RSS target <= 800 MB: {key} {g['peak_rss'] / 1e6:.0f} MB "
              f"({'met' if g['peak_rss'] <= 800e6 else 'NOT met'})")
        print(f"  {key} per-iteration tokens/s: {', '.join(f'{t:.0f}' for t in g['per_iteration'])}", flush=True)
    if args.thread_scaling and args.threads > 1:
        thread_scaling(args, base, best["ggtune"])
    if args.profile:
        prof = run_child("ggtune", dict(base, warmup=1, iters=1, profile=True))
        print("ggtune --profile of the same configuration (second iteration):")
        print_profile(prof["log"])


def thread_scaling(args, base: dict, full: dict) -> None:
    """ggtune's tokens/s on 1 thread beside the main run's N, and the parallel efficiency
    tokens/s(N) / (N * tokens/s(1)); the 1-thread runs take turns with N-thread ones so that both
    see the same load."""
    one, many = None, full
    for _ in range(args.rounds):
        r1 = run_child("ggtune", dict(base, threads=1))
        rn = run_child("ggtune", dict(base))
        one = r1 if one is None or r1["tokens_per_second"] > one["tokens_per_second"] else one
        many = rn if rn["tokens_per_second"] > many["tokens_per_second"] else many
    t1, tn = one["tokens_per_second"], many["tokens_per_second"]
    print(f"  ggtune threads 1 / {args.threads}: {t1:.1f} / {tn:.1f} tokens/s, parallel efficiency "
          f"{tn / (args.threads * t1):.2f} (best of {args.rounds} + the main run)", flush=True)


def scale_run(args) -> None:
    import scale_models

    data = os.path.join(args.workdir, "random_words.txt")
    with open(data, "w") as f:
        f.write(scale_models.random_words_text(2000, seed=SEED))
    print("scale: random-weight Q4_0 models of real shapes, ctx 512, batch 1, 2 iterations "
          "(tokens/s of each iteration)", flush=True)
    for key in ("tinyllama-1.1b", "llama-2-7b"):
        shape = scale_models.SHAPES[key]
        path = os.path.join(args.workdir, f"random-{key}-q4_0.gguf")
        start = time.perf_counter()
        scale_models.write_random_model(path, shape, seed=SEED)
        written = time.perf_counter() - start
        r = run_child("ggtune", dict(model=path, data=data, ctx=512, batch=1, threads=args.threads, warmup=1, iters=1))
        print(f"  {shape.name:<16} file {os.path.getsize(path) / 2**30:5.2f} GiB (written in {written:.0f} s): "
              f"{' / '.join(f'{t:.1f}' for t in r['per_iteration'])} tokens/s, peak RSS {mib(r['peak_rss'])}, "
              f"plan {mib(r['plan'])}", flush=True)
        os.remove(path)


def ctx_sweep(args, model: str, data: str) -> None:
    print("ctx sweep: SmolLM2, ctx x batch = 1024 tokens per iteration where possible, "
          "1 warm-up + 2 timed iterations", flush=True)
    for ctx in (128, 256, 512, 1024, 2048):
        batch = max(1024 // ctx, 1)
        r = run_child("ggtune", dict(model=model, data=data, ctx=ctx, batch=batch, threads=args.threads, warmup=1,
                                     iters=2))
        print(f"  ctx {ctx:5d} batch {batch}: {r['tokens_per_second']:8.1f} tokens/s, peak RSS {mib(r['peak_rss'])}",
              flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the systems in turn this many times and compare each one's best")
    parser.add_argument("--keep-layers", type=int, default=None,
                        help="also run ggtune with --keep-layers N (the last N layers keep their activations)")
    parser.add_argument("--no-torch", dest="torch", action="store_false", help="skip the PyTorch side")
    parser.add_argument("--no-thread-scaling", dest="thread_scaling", action="store_false",
                        help="skip ggtune's 1-thread runs (tokens/s at 1 and --threads threads)")
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="skip the profiled ggtune run")
    parser.add_argument("--no-main", dest="main", action="store_false", help="skip the main SmolLM2 comparison")
    parser.add_argument("--scale", action="store_true", help="also train random TinyLlama-1.1B / Llama-2-7B shapes")
    parser.add_argument("--ctx-sweep", action="store_true", help="also SmolLM2 tokens/s from ctx 128 to 2048")
    parser.add_argument("--workdir", default=None, help="where the data and scale models go (default: a temp dir)")
    args = parser.parse_args(argv)

    sys.path.insert(0, HERE)
    from ggtune.fetch import smollm2_path

    with tempfile.TemporaryDirectory() as tmp:
        args.workdir = args.workdir or tmp
        os.makedirs(args.workdir, exist_ok=True)
        model = str(smollm2_path())
        data = licences_text(args.workdir)
        print(f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)
        if args.main:
            main_run(args, model, data)
        if args.ctx_sweep:
            ctx_sweep(args, model, data)
        if args.scale:
            scale_run(args)


def child_main(kind: str, params_json: str) -> None:
    params = json.loads(params_json)
    result = {"ggtune": child_ggtune, "torch": child_torch}[kind](params)
    print(RESULT_TAG + json.dumps(result), flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child_main(sys.argv[2], sys.argv[3])
    else:
        main()
