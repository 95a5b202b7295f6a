#!/usr/bin/env bash
# Incremental developer build: compiles the extension into build/dev and drops it
# next to the sources, so `PYTHONPATH=python python -m pytest` tests this checkout
# without installing it. (Users and CI install with `pip install .` instead.)
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build/dev -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -Dpybind11_DIR="$(python -m pybind11 --cmakedir)" > /dev/null
cmake --build build/dev
# Copy then rename: a process still running the previous build keeps its mapped file (an
# in-place overwrite would crash it).
for so in build/dev/_core*.so; do
  cp "$so" "python/ggtune/$(basename "$so").tmp"
  mv "python/ggtune/$(basename "$so").tmp" "python/ggtune/$(basename "$so")"
done
