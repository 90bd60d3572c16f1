#!/usr/bin/env bash
# Run the whole GPU suite on a GPU machine that has PyTorch/CuPy/cuda-bindings/nvcc but no network,
# from files carried along in a folder (default .gpu_carry, ignored by git):
#   wheels/*.whl                  missing Python packages (gguf, prompt_toolkit, wcwidth, platformdirs)
#   wheels/hip_python_slim.tar.xz hip-python (scripts/hip_shim/slim_hip_python.sh), for --backend hip
#   SmolLM2-135M-Instruct.Q4_1.gguf or pieces of it named smol.partNN (`split -n 2 -d FILE smol.part`);
#                                 pieces are kept in $RF_PARTS_DIR across calls on a warm machine, so a
#                                 file too large for one transfer can arrive in two
# Stages (default: all): setup compile select kernels models shaped real launch cli bench. Logs go to $OUT (or /tmp/rf_out).
# The hip backend runs through the test-only shim (scripts/hip_shim) that forwards HIP to CUDA.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CARRY="${CARRY:-.gpu_carry}"
OUT="${OUT:-/tmp/rf_out}"
RF_PARTS_DIR="${RF_PARTS_DIR:-/root/rf_parts}"
export ROCMFORGE_HOME="${ROCMFORGE_HOME:-/root/rf_home}"
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$ROCMFORGE_HOME" "$RF_PARTS_DIR"
stages="${*:-setup compile select kernels models shaped real launch cli bench}"
SMOL=SmolLM2-135M-Instruct.Q4_1.gguf
SMOL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
summary=()
note() { echo "== $*"; summary+=("$*"); }

setup() {
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$CARRY"/wheels/*.whl || return 1
    if [ -f "$CARRY/wheels/hip_python_slim.tar.xz" ]; then
        tar -C /tmp/site -xJf "$CARRY/wheels/hip_python_slim.tar.xz" || return 1
    fi
    nvidia-smi -L || true
    python3 -c "import cuda.bindings, numpy, sys; print('python', sys.version.split()[0], 'cuda-bindings', cuda.bindings.__version__, 'numpy', numpy.__version__)"
    bash scripts/hip_shim/build.sh /tmp/hip_shim || return 1
}

env_common() {
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    export LD_LIBRARY_PATH="/tmp/hip_shim${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    # The shim's NVRTC: the one cuda-bindings uses (pip's nvidia-cuda-nvrtc), else the toolkit's.
    RF_SHIM_NVRTC="$(python3 - <<'EOF'
import glob, site, sys
cands = []
for d in site.getsitepackages() + [site.getusersitepackages()] + sys.path:
    cands += glob.glob(f"{d}/nvidia/cu*/lib/libnvrtc.so*") + glob.glob(f"{d}/nvidia/cuda_nvrtc/lib/libnvrtc.so*")
cands += glob.glob("/usr/local/cuda*/lib64/libnvrtc.so*")
cands = [c for c in cands if "builtins" not in c and "alt" not in c]
print(sorted(cands, key=len)[0] if cands else "")
EOF
)"
    export RF_SHIM_NVRTC
}

assemble_model() {
    for part in "$CARRY"/smol.part*; do
        [ -f "$part" ] && cp "$part" "$RF_PARTS_DIR/"
    done
    [ -f "$CARRY/$SMOL" ] && cp "$CARRY/$SMOL" "$ROCMFORGE_HOME/$SMOL"
    if [ ! -f "$ROCMFORGE_HOME/$SMOL" ] && ls "$RF_PARTS_DIR"/smol.part* >/dev/null 2>&1; then
        cat "$RF_PARTS_DIR"/smol.part* > "$ROCMFORGE_HOME/$SMOL.tmp"
        if echo "$SMOL_SHA  $ROCMFORGE_HOME/$SMOL.tmp" | sha256sum -c --quiet 2>/dev/null; then
            mv "$ROCMFORGE_HOME/$SMOL.tmp" "$ROCMFORGE_HOME/$SMOL"
        else
            rm -f "$ROCMFORGE_HOME/$SMOL.tmp"
            echo "SmolLM2 pieces present: $(ls "$RF_PARTS_DIR") (not all of them yet)"
        fi
    fi
    [ -f "$ROCMFORGE_HOME/$SMOL" ]
}

run_pytest() {  # name, backends, pytest args...
    local name="$1" backends="$2"
    shift 2
    ROCMFORGE_GPU_BACKENDS="$backends" python3 -m pytest -q -rs -p no:cacheprovider "$@" \
        >"$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$OUT/$name.log"
    note "$name: rc=$rc $(grep -E '[0-9]+ (passed|failed)' "$OUT/$name.log" | tail -n 1)"
}

cli() {
    assemble_model || { note "cli: skipped (no SmolLM2 file)"; return; }
    local prompt="What is the capital of France? Answer in one word."
    echo "$prompt" | timeout 300 python3 -m rocmforge_cli chat smollm2 --backend cuda --temp 0 -n 24 \
        >"$OUT/chat_cuda.out" 2>"$OUT/chat_cuda.err"
    note "chat --backend cuda (stdin): rc=$? stdout=$(tr '\n' ' ' <"$OUT/chat_cuda.out" | head -c 200)"
    timeout 300 python3 -m rocmforge_cli generate smollm2 --backend cuda --temp 0 -n 24 -p "$prompt" --json \
        >"$OUT/generate_cuda.json" 2>"$OUT/generate_cuda.err"
    note "generate --backend cuda --json: rc=$? $(head -c 300 "$OUT/generate_cuda.json")"
    timeout 300 python3 -m rocmforge_cli generate smollm2 --backend hip --temp 0 -n 24 -p "$prompt" \
        >"$OUT/generate_hip.out" 2>"$OUT/generate_hip.err"
    note "generate --backend hip: rc=$? stdout=$(tr '\n' ' ' <"$OUT/generate_hip.out" | head -c 200)"
    timeout 300 python3 -m rocmforge_cli generate smollm2 --backend cpu --temp 0 -n 24 -p "$prompt" \
        >"$OUT/generate_cpu.out" 2>"$OUT/generate_cpu.err"
    note "generate --backend cpu: rc=$? stdout=$(tr '\n' ' ' <"$OUT/generate_cpu.out" | head -c 200)"
}

select_stage() {  # what --backend auto picks with and without the HIP shim on the library path
    local code='from rocmforge_core.backends import select_backend; print(select_backend("auto"))'
    note "auto with shim: $(python3 -c "$code" 2>&1 | tail -n 1)"
    note "auto without shim: $(LD_LIBRARY_PATH= python3 -c "$code" 2>&1 | tail -n 1)"
}

launch_stage() {  # host cost of one launch: pre-packed arguments vs hip-python's tuple packing
    python3 - >"$OUT/launch.txt" 2>&1 <<'PYEOF'
import ctypes, time
import numpy as np
from rocmforge_core.backends.gpu import GpuOps
from rocmforge_core.gpu import open_runtime
for name in ("cuda", "hip"):
    ops = GpuOps(open_runtime(name))
    x = ops.upload(np.ones(4096, np.float32))
    y = ops.empty((4096,))
    fn, packed = ops.kernel("scale_f32")
    packed.set_all((x.ptr, y.ptr, 4096, 2.0))
    rt, n = ops.rt, 5000
    for _ in range(100):
        rt.launch(fn, (16, 1, 1), (256, 1, 1), packed, ops.stream)
    ops.sync()
    t = time.perf_counter()
    for _ in range(n):
        rt.launch(fn, (16, 1, 1), (256, 1, 1), packed, ops.stream)
    t_pre = (time.perf_counter() - t) / n * 1e6
    ops.sync()
    t = time.perf_counter()
    for _ in range(n):
        ops.scale(x, 2.0)
    t_op = (time.perf_counter() - t) / n * 1e6
    ops.sync()
    line = f"{name}: launch with pre-packed args {t_pre:.1f} us; whole ops.scale call {t_op:.1f} us"
    if name == "hip":
        from hip import hip
        extra = (ctypes.c_void_p(x.ptr), ctypes.c_void_p(y.ptr), ctypes.c_longlong(4096), ctypes.c_float(2.0))
        t = time.perf_counter()
        for _ in range(n):
            hip.hipModuleLaunchKernel(fn, 16, 1, 1, 256, 1, 1, 0, ops.stream, None, extra)
        t_tuple = (time.perf_counter() - t) / n * 1e6
        ops.sync()
        line += f"; hip-python tuple packing {t_tuple:.1f} us"
    print(line)
PYEOF
    cat "$OUT/launch.txt"
    note "launch: $(tail -n 2 "$OUT/launch.txt" | tr '\n' ' ')"
}

bench() {
    assemble_model || { note "bench: skipped (no SmolLM2 file)"; return; }
    # GPU backends with decode graphs (the default) and op by op (ROCMFORGE_GPU_GRAPHS=0).
    for b in cuda cuda:0 hip hip:0 cpu; do
        local name="${b%%:*}" graphs=1 tag="${b/:/_graphs}"
        [ "$b" != "$name" ] && graphs=0
        ROCMFORGE_GPU_GRAPHS=$graphs timeout 300 python3 -m rocmforge_cli bench smollm2 --backend "$name" \
            -p 128 -n 32 -r 3 --json >"$OUT/bench_$tag.json" 2>"$OUT/bench_$tag.err"
        note "bench $b (graphs=$graphs): rc=$? $(cat "$OUT/bench_$tag.json" | head -c 400)"
    done
}

env_common
for stage in $stages; do
    echo "######## $stage  $(date -u +%T)"
    case "$stage" in
        setup) setup; note "setup: rc=$?"; env_common ;;
        compile) run_pytest compile "" tests/test_kernel_compile.py ;;
        kernels) for b in cuda hip; do
                     run_pytest "runtime_$b" "$b" tests/gpu/test_runtime.py
                     run_pytest "kernels_$b" "$b" tests/gpu/test_kernels.py tests/gpu/test_mmvq.py tests/gpu/test_mmf.py tests/gpu/test_fattn.py
                 done ;;
        select) select_stage ;;
        models) run_pytest models_cuda cuda tests/gpu/test_model_gpu.py tests/gpu/test_decode_graph.py -m "not slow"
                run_pytest models_hip hip tests/gpu/test_model_gpu.py tests/gpu/test_decode_graph.py -m "not slow" ;;
        shaped) run_pytest shaped_cuda cuda tests/gpu/test_model_gpu.py -m slow -k shaped -s
                run_pytest shaped_hip hip tests/gpu/test_model_gpu.py -m slow -k shaped -s ;;
        launch) launch_stage ;;
        real) if assemble_model; then
                  run_pytest real_cuda cuda tests/gpu/test_model_gpu.py -m slow -k "(smollm2 or real_model) and not shaped" -s
                  run_pytest real_hip hip tests/gpu/test_model_gpu.py -m slow -k "(smollm2 or real_model) and not shaped" -s
              else
                  note "real: skipped (SmolLM2 not complete yet)"
              fi ;;
        cli) cli ;;
        bench) bench ;;
        *) note "unknown stage $stage" ;;
    esac
done
echo "######## summary"
printf '%s\n' "${summary[@]}" | tee "$OUT/summary.txt"
