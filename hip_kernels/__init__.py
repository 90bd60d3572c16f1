"""HIP C++ kernel sources shipped as package data; the GPU runtimes compile them at run time."""

from pathlib import Path

KERNEL_DIR = Path(__file__).resolve().parent
