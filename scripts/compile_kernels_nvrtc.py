"""CI compile check for NVIDIA: every hip_kernels/*.hip through NVRTC for sm_90 (no GPU needed), with
the prelude inlined and the defines the runtime passes. One line per file, then "N compiled, M failed";
exit 0 when all compiled, 1 when one failed, 3 when NVRTC cannot be imported.

    python scripts/compile_kernels_nvrtc.py [WORKERS]

.ci/run starts it in the background (the second core is idle while pytest runs on one) and
tests/test_kernel_compile.py reads its result; elsewhere the test runs the same function itself.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def compile_all(workers: int = 2) -> tuple[int, list[str]]:
    """(files compiled, the lines to print); raises ImportError-like errors when NVRTC is absent."""
    from rocmforge_core.gpu.runtime import kernel_files, kernel_source
    from rocmforge_core.gpu.runtime_cuda import nvrtc_compile, nvrtc_version

    nvrtc_version()

    def build(name):  # NVRTC programs are independent
        try:
            cubin = nvrtc_compile(kernel_source(name), f"{name}.hip", ["-DWARP_SIZE=32"], "sm_90")
            return name, cubin[:4] == b"\x7fELF", f"{len(cubin)} bytes"
        except Exception as exc:  # a compile error: the log is the point of the check
            return name, False, f"{type(exc).__name__}: {exc}"

    names = kernel_files()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(build, names))
    lines = [f"{'ok  ' if ok else 'FAIL'} sm_90  {name}.hip ({what})" for name, ok, what in results]
    failed = sum(not ok for _, ok, _ in results)
    lines.append(f"{len(names) - failed} compiled, {failed} failed")
    return failed, lines


def main() -> int:
    try:
        failed, lines = compile_all(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
    except Exception as exc:
        print(f"NVRTC not importable here: {type(exc).__name__}: {exc}")
        return 3
    print("\n".join(lines), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
