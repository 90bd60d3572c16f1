#!/usr/bin/env bash
# CI compile check for AMD: every hip_kernels/*.hip through Debian's hipcc (ROCm) for a CDNA and an
# RDNA target, with the prelude and the defines the runtime passes (WARP_SIZE is 64 on gfx9, 32 on
# gfx10+). Needs no GPU. Fails (non-zero) if any kernel file does not compile.
#   apt-get install -y hipcc libamdhip64-dev rocm-device-libs
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
kernels="$root/hip_kernels"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
export HIP_PLATFORM=amd   # this machine may also have nvcc: never let hipcc pick the NVIDIA path
command -v hipcc >/dev/null || { echo "hipcc not found (apt-get install -y hipcc libamdhip64-dev rocm-device-libs)" >&2; exit 3; }

# One target per background job (CI has two cores); each writes its own log, read back in order.
compile_target() {  # arch warp
    local arch="$1" warp="$2" failed=0 count=0
    for src in "$kernels"/*.hip; do
        name="$(basename "$src" .hip)"
        count=$((count + 1))
        if hipcc --genco --offload-arch="$arch" -O3 -std=c++17 -DWARP_SIZE="$warp" -I"$kernels" \
                -x hip "$src" -o "$out/$name.$arch.hsaco" 2>"$out/$name.$arch.log"; then
            echo "ok   $arch  $name.hip ($(stat -c %s "$out/$name.$arch.hsaco") bytes)"
        else
            echo "FAIL $arch  $name.hip"
            cat "$out/$name.$arch.log"
            failed=$((failed + 1))
        fi
    done
    echo "$count $failed" >"$out/$arch.counts"
}

targets="gfx90a:64 gfx1030:32"
for target in $targets; do
    compile_target "${target%%:*}" "${target##*:}" >"$out/${target%%:*}.out" 2>&1 &
done
wait
failed=0
count=0
for target in $targets; do
    arch="${target%%:*}"
    cat "$out/$arch.out"
    read -r c f <"$out/$arch.counts" || { c=0; f=1; }
    count=$((count + c))
    failed=$((failed + f))
done
echo "$((count - failed)) compiled, $failed failed"
[ "$failed" -eq 0 ]
