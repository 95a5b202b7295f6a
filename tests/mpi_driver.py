"""Runs ggtune.finetune on one MPI rank for tests/test_distributed.py (started by mpirun).

argv[1] is a JSON file: {"kwargs": {...}, "per_rank": {"1": {...}}, "result": path, "pids": dir, "cli": bool}.
Each rank records its pid in pids/<rank> (so a test can stop one); rank 0 writes the result as JSON.
With "cli", the options (no booleans) go through `ggtune finetune` instead, as a user's would.
"""

import json
import os
import sys

import ggtune


def main() -> int:
    spec = json.load(open(sys.argv[1]))
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMI_RANK", "0")))
    if spec.get("pids"):
        with open(os.path.join(spec["pids"], str(rank)), "w") as f:
            f.write(str(os.getpid()))
    kwargs = {**spec["kwargs"], **spec.get("per_rank", {}).get(str(rank), {})}
    if spec.get("cli"):
        from ggtune.cli import main as cli_main

        return cli_main(["finetune", *[f"--{k}={v}" for k, v in kwargs.items()]])
    result = ggtune.finetune(**kwargs)
    if rank == 0:
        with open(spec["result"], "w") as f:
            json.dump({"losses": result.losses, "iterations": result.iterations, "written": result.written,
                       "exchange_seconds": result.exchange_seconds}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
