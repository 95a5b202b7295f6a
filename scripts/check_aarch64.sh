#!/usr/bin/env bash
# Cross-compiles and links every portable kernel source for aarch64 (the *_avx2/*_avx512 files are
# x86-only and left out, as CMakeLists.txt does there). Needs Debian's g++-aarch64-linux-gnu.
set -euo pipefail
cd "$(dirname "$0")/.."
py_inc=$(python -c "import sysconfig; print(sysconfig.get_paths()['include'])")
pb_inc=$(python -c "import pybind11; print(pybind11.get_include())")
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for src in $(find csrc -name '*.cpp' ! -name '*_avx2.cpp' ! -name '*_avx512.cpp'); do
  aarch64-linux-gnu-g++ -std=c++17 -O3 -fPIC -fopenmp -Icsrc -I"$py_inc" -I"$pb_inc" \
    -c "$src" -o "$out/$(basename "$src").o"
done
aarch64-linux-gnu-g++ -shared -fopenmp "$out"/*.o -o "$out/_core.so"
file "$out/_core.so"
