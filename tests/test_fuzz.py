"""Fuzz tier: seeded truncations and byte changes of every parser's input (model GGUF, adapter
GGUF, training checkpoint, old ggcp checkpoint, chat JSONL), each fed to the `ggtune` commands
that read it, in child processes with a time and a memory limit.

Every case must end in a clear error (exit 1 or 2, one `ggtune ...: error:` line naming the
damaged file, no traceback) or a valid result (exit 0, every number it produced finite); never a
signal, a hang, a traceback or a non-finite result. fuzz_worker.py runs and judges the cases.

The default run has a few hundred cases; ``pytest -m fuzz`` adds the long tier (ten times more).
"""

from __future__ import annotations

import collections
import json
import os
import random
import resource
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import gguf

import ggtune
from ggcp_writer import GgcpSpec, build_ggcp
from tiny_models import T, tensor_shapes, TinyConfig, write_random_adapter, write_tiny_llama

HERE = Path(__file__).parent
SECONDS_PER_CASE = 30  # a tiny model: real cases take well under a second
MEMORY_LIMIT = 3 << 30  # address space of a worker, bytes (numpy, OpenMP stacks and the maps fit)
WORKERS = 2
CI_CASES = {"model": 80, "adapter": 80, "checkpoint": 60, "ggcp": 50, "chat": 50}
LONG_FACTOR = 10
EXTREMES = (0, 1, 0x7F, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 32, 1 << 40, 1 << 63, (1 << 64) - 1)
CHAT_NOISE = (b"[" * 100_000, b'{"messages": 5}', b"\xe9", b"\x00", b'"role": 1', b"1e999", b"\xef\xbb\xbf",
              b'{"messages": [{"role": "assistant", "content": ""}]}', b"\n\n\n", b'"\\ud800"', b"{" * 5000)


@dataclass
class Seeds:
    """The undamaged inputs and the files the commands need beside them."""
    dir: Path
    model: Path
    text: Path
    adapter: Path
    checkpoint: Path
    ggcp: Path
    chat: Path


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> Seeds:
    d = tmp_path_factory.mktemp("fuzz_seeds")
    cfg = TinyConfig(n_embd=32, n_ff=64, n_head=4, n_head_kv=2, n_layer=2, n_ctx=64, byte_vocab=True,
                     weight_type=T.Q8_0, embd_type=T.F16, output_type=T.F32)
    model = Path(write_tiny_llama(d / "model.gguf", cfg))
    text = d / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 12)
    shapes = {name: s for name, s in tensor_shapes(cfg).items() if len(s) == 2 and name.startswith("blk.")}
    write_random_adapter(d / "adapter.gguf", shapes, rank=2, alpha=4.0)
    ggtune.finetune(str(model), str(text), lora_out=str(d / "lora-ITERATION.gguf"), ctx=16, batch=2, adam_iter=2,
                    checkpoint_in="", checkpoint_out=str(d / "checkpoint-ITERATION.gguf"), save_every=0,
                    threads=1, verbose=False)
    (d / "old.ggcp").write_bytes(build_ggcp(GgcpSpec()).data)
    chat = d / "chat.jsonl"
    chat.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"question {i}?"},
                                                     {"role": "assistant", "content": f"answer {i}."}]}) + "\n"
                            for i in range(3)))
    return Seeds(d, model, text, d / "adapter.gguf", d / "checkpoint-LATEST.gguf", d / "old.ggcp", chat)


# ---- damage ---------------------------------------------------------------------------------------

def header_length(data: bytes) -> int:
    """Bytes before a GGUF file's tensor data (the whole file for anything else)."""
    if data[:4] != b"GGUF":
        return len(data)
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".gguf") as f:
        f.write(data)
        f.flush()
        return int(gguf.GGUFReader(f.name).data_offset)


def damage(data: bytes, header: int, rng: random.Random, kind: int, noise: tuple[bytes, ...] = ()) -> bytes:
    """One seeded change: 0 truncation, 1 flipped bytes in the header, 2 an extreme integer written
    over the header (counts, lengths, offsets, dimensions), 3 flipped bytes anywhere, 4 a noise
    snippet inserted (text inputs)."""
    out = bytearray(data)
    if kind == 0:
        return bytes(out[: rng.randrange(0, len(out))])
    if kind in (1, 3):
        span = header if kind == 1 else len(out)
        for _ in range(rng.randint(1, 3)):
            out[rng.randrange(span)] ^= rng.randrange(1, 256)
        return bytes(out)
    if kind == 2 or not noise:
        at = rng.randrange(0, max(1, header - 8)) & ~3
        width = rng.choice((4, 8))
        value = rng.choice(EXTREMES) & ((1 << (8 * width)) - 1)
        out[at:at + width] = struct.pack("<I" if width == 4 else "<Q", value)
        return bytes(out)
    at = rng.randrange(len(out) + 1)
    return bytes(out[:at] + rng.choice(noise) + out[at:])


# ---- the commands that read each input ---------------------------------------------------------

def commands(parser: str, bad: Path, out: Path, s: Seeds) -> list[tuple[list[str], str, list[str]]]:
    """[(argv, result kind, output paths)] of the commands reading a damaged ``parser`` input."""
    m, text = str(s.model), str(s.text)
    quiet = ["--quiet", "--threads", "1"]
    if parser == "model":
        return [(["perplexity", "-m", str(bad), "--text", text, "--ctx", "16", "-t", "1"], "perplexity", []),
                (["generate", "-m", str(bad), "-p", "The fox", "-n", "4", "--seed", "1", "-t", "1"], "any", [])]
    if parser == "adapter":
        return [(["perplexity", "-m", m, "--lora", str(bad), "--text", text, "--ctx", "16", "-t", "1"], "perplexity", []),
                (["merge", "-m", m, "--lora", str(bad), "-o", str(out), "--outtype", "f32"], "gguf_outputs", [str(out)]),
                (["export-peft", "--lora", str(bad), "--model", m, "--output", str(out) + ".peft"], "peft",
                 [str(out) + ".peft"])]
    if parser == "checkpoint":
        lora, ck = str(out) + ".lora.gguf", str(out) + ".ck.gguf"
        train = ["finetune", "--model-base", m, "--train-data", text, "--checkpoint-in", str(bad), "--ctx", "16",
                 "--batch", "2", *quiet]
        return [([*train, "--only-write-lora", "--lora-out", lora], "gguf_outputs", [lora]),
                (["merge", "-m", m, "--lora", str(bad), "-o", str(out), "--outtype", "f32"], "gguf_outputs", [str(out)]),
                ([*train, "--adam-iter", "1", "--lora-out", lora, "--checkpoint-out", ck], "gguf_outputs", [lora, ck])]
    if parser == "ggcp":
        return [(["convert-checkpoint", "--input", str(bad), "--output", str(out)], "gguf_outputs", [str(out)])]
    if parser == "chat":
        return [(["finetune", "--model-base", m, "--train-data", str(bad), "--train-format", "chat", "--ctx", "32",
                  "--batch", "1", "--adam-iter", "1", "--checkpoint-in", "", "--checkpoint-out", "",
                  "--lora-out", str(out), *quiet], "gguf_outputs", [str(out)])]
    raise ValueError(parser)


def make_cases(s: Seeds, work: Path, counts: dict[str, int], seed: int) -> list[dict]:
    sources = {"model": s.model, "adapter": s.adapter, "checkpoint": s.checkpoint, "ggcp": s.ggcp, "chat": s.chat}
    cases = []
    for parser, n in counts.items():
        data = sources[parser].read_bytes()
        header = header_length(data)
        kinds = 5 if parser == "chat" else 4
        for i in range(n):
            rng = random.Random(f"{seed}-{parser}-{i}")
            kind = i % kinds
            bad = work / f"{parser}-{i}{sources[parser].suffix}"
            bad.write_bytes(damage(data, header, rng, kind, CHAT_NOISE if parser == "chat" else ()))
            options = commands(parser, bad, work / f"out-{parser}-{i}.gguf", s)
            argv, result, outputs = options[i // kinds % len(options)]
            cases.append({"id": f"{parser}-{i}", "parser": parser, "kind": kind, "argv": argv, "result": result,
                          "outputs": outputs, "file": str(bad)})
    return cases


# ---- running -----------------------------------------------------------------------------------

def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_batch(cases: list[dict], path: Path) -> list[dict]:
    """Runs cases in one child; a case that kills or hangs it is reported, the rest re-run."""
    results, todo = [], list(cases)
    while todo:
        path.write_text(json.dumps(todo))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(ggtune.__file__).parents[1]), str(HERE)]),
                   OMP_NUM_THREADS="1")
        proc = subprocess.run([sys.executable, str(HERE / "fuzz_worker.py"), str(path), str(SECONDS_PER_CASE)],
                              capture_output=True, text=True, env=env, preexec_fn=_limit_memory,
                              timeout=SECONDS_PER_CASE * len(todo) + 60)
        started, done = None, set()
        for line in proc.stdout.splitlines():
            record = json.loads(line)
            if "start" in record:
                started = record["start"]
            else:
                results.append(record)
                done.add(record["id"])
        if proc.returncode == 0:
            break
        how = "hang" if proc.returncode == 124 else f"died (exit {proc.returncode}, signal {-proc.returncode})" \
            if proc.returncode < 0 else f"worker exit {proc.returncode}"
        results.append({"id": started, "code": proc.returncode, "err": proc.stderr[-2000:], "problem": how})
        todo = [c for c in todo if c["id"] not in done and c["id"] != started]
    return results


def run_all(cases: list[dict], work: Path) -> list[dict]:
    from concurrent.futures import ThreadPoolExecutor

    batches = [cases[i::WORKERS] for i in range(WORKERS)]
    with ThreadPoolExecutor(WORKERS) as pool:
        parts = pool.map(run_batch, batches, [work / f"cases-{i}.json" for i in range(WORKERS)])
    return [r for part in parts for r in part]


def tally(cases: list[dict], results: list[dict]) -> str:
    by_id = {c["id"]: c for c in cases}
    counts = collections.Counter()
    for r in results:
        c = by_id.get(r["id"], {"parser": "?"})
        outcome = "PROBLEM" if r["problem"] else ("valid result" if r["code"] == 0 else f"clear error {r['code']}")
        counts[(c["parser"], outcome)] += 1
    return "; ".join(f"{p} {o}: {n}" for (p, o), n in sorted(counts.items()))


def fuzz(seeds: Seeds, tmp_path: Path, counts: dict[str, int], seed: int) -> None:
    cases = make_cases(seeds, tmp_path, counts, seed)
    results = run_all(cases, tmp_path)
    summary = tally(cases, results)
    print(f"fuzz tally ({len(cases)} cases): {summary}")
    (tmp_path / "tally.txt").write_text(summary + "\n")
    if os.environ.get("GGTUNE_FUZZ_TALLY"):  # a file to collect the counts of runs in
        with open(os.environ["GGTUNE_FUZZ_TALLY"], "a") as f:
            f.write(f"seed {seed}, {len(cases)} cases: {summary}\n")
    by_id = {c["id"]: c for c in cases}
    problems = [f"{r['id']} {by_id.get(r['id'], {}).get('argv')}: {r['problem']}\n{r['err'][-600:]}"
                for r in results if r["problem"]]
    (tmp_path / "problems.txt").write_text("\n".join(problems))
    assert len(results) == len(cases)
    assert not problems, f"{len(problems)} of {len(cases)} cases:\n" + "\n".join(problems[:8])


def test_fuzz_every_parser(seeds, tmp_path):
    fuzz(seeds, tmp_path, CI_CASES, seed=0)


@pytest.mark.fuzz
def test_fuzz_every_parser_long(seeds, tmp_path):
    fuzz(seeds, tmp_path, {p: n * LONG_FACTOR for p, n in CI_CASES.items()}, seed=1)
