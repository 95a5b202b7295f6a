"""Child process of the fuzz tier (test_fuzz.py): runs a batch of `ggtune` command lines in this
one process (start-up would otherwise dominate) and reports each on stdout as a JSON line.

Usage: python fuzz_worker.py CASES.json SECONDS_PER_CASE. Before each case it prints
{"start": id}; after it {"id", "code", "err", "problem"}, where problem is "" when the outcome is
acceptable: a clear error (exit 1 or 2, one `ggtune ...: error:` line naming the damaged file, no
traceback) or a valid result (exit 0 and every number produced finite). A case that hangs ends
the process with exit code 124 (the parent knows which case started last); a crash by signal
shows as the process's own death.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import signal
import sys

import numpy as np

TIMEOUT_EXIT = 124
PROGRESS = re.compile(r"^[\w() -]+ \[[#. -]*\] ")  # progress.Progress lines, not messages


def _on_timeout(signum, frame):  # never an exception: the code under test might swallow it
    os.write(2, b"fuzz case timed out\n")
    os._exit(TIMEOUT_EXIT)


def run_case(case: dict) -> tuple[int, str, str]:
    from ggtune.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(case["argv"])
        except SystemExit as e:  # argparse
            code = e.code if isinstance(e.code, int) else 1
        except BaseException as e:  # anything else is a traceback the user would see
            import traceback

            traceback.print_exc(file=err)
            code = f"uncaught {type(e).__name__}"
    return code, out.getvalue(), err.getvalue()


def judge(case: dict, code, out: str, err: str) -> str:
    """'' when the outcome is acceptable, else what is wrong."""
    if "Traceback" in err or not isinstance(code, int):
        return f"traceback ({code})"
    if code == 0:
        return check_result(case, out)
    if code not in (1, 2):
        return f"exit code {code}"
    lines = [line for line in err.replace("\r", "\n").split("\n") if line.strip() and not PROGRESS.match(line)]
    if len(lines) != 1 or not re.match(r"ggtune [\w-]+: error: ", lines[0]):
        return f"not one error line: {lines[-3:]}"
    if os.path.basename(case["file"]) not in lines[0]:
        return "the error does not name the file"
    return ""


def check_result(case: dict, out: str) -> str:
    """A command that succeeded must have produced finite numbers only."""
    kind = case["result"]
    if kind == "perplexity":
        found = re.search(r"mean cross-entropy (\S+) nats, perplexity (\S+)", out)
        if not found or not all(math.isfinite(float(v)) for v in found.groups()):
            return f"non-finite or missing result: {out.strip()[-200:]}"
        return ""
    if kind == "gguf_outputs":  # every tensor of every written GGUF file finite
        from ggtune.gguf_io import open_gguf
        from gguf.quants import dequantize

        for path in case["outputs"]:
            for t in open_gguf(path).tensors:
                values = np.asarray(dequantize(t.data, t.tensor_type), np.float64)
                if not np.isfinite(values).all():
                    return f"{path}: tensor {t.name} is not finite"
        return ""
    if kind == "peft":
        from safetensors.numpy import load_file

        for name, values in load_file(os.path.join(case["outputs"][0], "adapter_model.safetensors")).items():
            if not np.isfinite(values).all():
                return f"PEFT tensor {name} is not finite"
        return ""
    if kind == "any":
        return ""
    return f"unknown result kind {kind}"


def main() -> None:
    cases = json.load(open(sys.argv[1]))
    seconds = float(sys.argv[2])
    signal.signal(signal.SIGALRM, _on_timeout)
    for case in cases:
        print(json.dumps({"start": case["id"]}), flush=True)
        for path in case.get("outputs", []):  # a stale output of an earlier case must not count
            if os.path.isdir(path):
                import shutil

                shutil.rmtree(path)
            elif os.path.exists(path):
                os.unlink(path)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        code, out, err = run_case(case)
        problem = judge(case, code, out, err)
        signal.setitimer(signal.ITIMER_REAL, 0)
        print(json.dumps({"id": case["id"], "code": code if isinstance(code, int) else str(code),
                          "err": err[-2000:], "problem": problem}), flush=True)


if __name__ == "__main__":
    main()
