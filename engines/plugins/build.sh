#!/usr/bin/env bash
# Build the reroute TensorRT plugin libraries on a GPU server (CUDA toolkit + TensorRT 10).
#
#   TENSORRT_ROOT=/opt/tensorrt engines/plugins/build.sh
#
# Environment: TENSORRT_ROOT (TensorRT prefix; system paths otherwise), CUDA_ARCHS
# (default "80;86;89;90"), BUILD_DIR (default engines/plugins/build), JOBS (default nproc).
# Output: $BUILD_DIR/libreroute_plugins.so and $BUILD_DIR/libreroute_plugins_dynamic.so.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
build_dir="${BUILD_DIR:-$here/build}"
archs="${CUDA_ARCHS:-80;86;89;90}"

command -v cmake >/dev/null || { echo "build.sh: cmake not found" >&2; exit 1; }
command -v nvcc >/dev/null || [[ -n "${CUDACXX:-}" ]] || {
  echo "build.sh: nvcc not found; put the CUDA toolkit's bin/ on PATH or set CUDACXX" >&2; exit 1; }

cmake_args=(-S "$here" -B "$build_dir" -DCMAKE_BUILD_TYPE=Release "-DREROUTE_CUDA_ARCHS=$archs")
if [[ -n "${TENSORRT_ROOT:-}" ]]; then
  cmake_args+=("-DTENSORRT_ROOT=$TENSORRT_ROOT")
fi

cmake "${cmake_args[@]}"
cmake --build "$build_dir" -j "${JOBS:-$(nproc)}"
echo "built: $build_dir/libreroute_plugins.so $build_dir/libreroute_plugins_dynamic.so"
