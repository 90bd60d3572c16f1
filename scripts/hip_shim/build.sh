#!/usr/bin/env bash
# Build the test-only HIP shim (hip_shim.c) as libamdhip64.so + libhiprtc.so in $1 (default: ./lib).
# hip-python finds them through LD_LIBRARY_PATH. Needs only gcc; libcuda and NVRTC are dlopened.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$here/lib}"
mkdir -p "$out"
gcc -O2 -Wall -Wextra -Wno-unused-parameter -shared -fPIC "$here/hip_shim.c" -ldl -o "$out/libamdhip64.so"
cp "$out/libamdhip64.so" "$out/libhiprtc.so"
echo "$out"
