#!/usr/bin/env bash
# Make a small copy of the hip-python wheel for carrying to a GPU test machine (test-only).
# The wheel is ~67 MB (every ROCm library's bindings, with symbols); rocmforge's hip runtime needs
# only hip.hip and hip.hiprtc. This keeps those modules and their helpers, strips the shared
# objects, and writes an xz tarball (~3 MB) that gpu_suite.sh unpacks onto PYTHONPATH.
#   scripts/hip_shim/slim_hip_python.sh path/to/hip_python-7.x-cp312-*.whl out.tar.xz
set -euo pipefail
wheel="$1"
out="$2"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
unzip -q "$wheel" -d "$tmp/full"
mkdir -p "$tmp/slim/hip/_util"
cd "$tmp/full"
cp -r hip_python-*.dist-info "$tmp/slim/"
cp hip/__init__.py hip/_version.py hip/hiprtc_pyext.py "$tmp/slim/hip/"
cp hip/_util/__init__.py hip/_util/*.so "$tmp/slim/hip/_util/"
for mod in hip chip hiprtc chiprtc _hip_helpers _hiprtc_helpers; do
    cp hip/$mod.cpython-*.so "$tmp/slim/hip/"
done
strip --strip-unneeded "$tmp"/slim/hip/*.so "$tmp"/slim/hip/_util/*.so
tar -C "$tmp/slim" -cJf "$out" .
ls -l "$out"
