"""The kernel table read from hip_kernels/ (rocmforge_core/gpu/kernels.py): every kernel the GPU ops
launch is found in the right file with the argument layout of its source, macro-stamped weight kernels
included, and an edited signature changes the layout. No GPU or compiler needed."""

from __future__ import annotations

import pytest

from rocmforge_core.gpu import mvq
from rocmforge_core.gpu.kernels import KernelSourceError, kernel_table, param_layout, scan, weight_kernel

MV = ("p", "i64", "p", "i32", "p", "i32", "p", "i32", "i32", "i32")
GET_ROWS = ("p", "i64", "p", "p", "i32", "f32")
# name -> (file, layout): what the ops in backends/gpu.py pack for each launch.
EXPECTED = {
    "rms_norm_f32": ("norm", ("p", "i64", "i32", "p", "p", "i32", "f32")),
    "add_f32": ("elementwise", ("p", "p", "p", "i64")),
    "scale_f32": ("elementwise", ("p", "p", "i64", "f32")),
    "softcap_f32": ("elementwise", ("p", "p", "i64", "f32")),
    "copy2d_f32": ("elementwise", ("p", "i64", "p", "i64", "i32")),
    "gather_rows_f32": ("elementwise", ("p", "p", "p", "i32")),
    "dot4_i8_rows": ("elementwise", ("p", "p", "p", "i32", "i32")),
    "swiglu_f32": ("activation", ("p", "p", "i32", "i32")),
    "geglu_f32": ("activation", ("p", "p", "i32", "i32")),
    "rope_f32": ("rope", ("p", "i64", "p", "p", "p", "p", "i32", "i32", "i32", "i32")),
    "kv_append_f32": ("rope", ("p", "i64", "p", "i64", "p", "p", "p", "p", "i32", "i32", "i32")),
    **{f"rope_qk_kv_append_{t}": ("rope", ("p", "i64", "p", "i64", "p", "i64") + ("p",) * 8 + ("i32",) * 6)
       for t in ("f32", "f16")},
    "attn_f32": ("attention", ("p",) * 6 + ("i32",) * 4 + ("f32", "i32", "p", "p")),
    "attn_split_f32": ("attention", ("p",) * 7 + ("i32",) * 4 + ("f32", "i32")),
    "attn_combine_f32": ("attention", ("p",) * 3 + ("i32",) * 3 + ("p",) * 3 + ("i32", "i32")),
    "rope_qk_f32": ("rope", ("p", "i64", "p", "i64") + ("p",) * 5 + ("i32",) * 5),
    "softmax_f32": ("softmax", ("p", "p", "i32")),
    "argmax_f32": ("softmax", ("p", "p", "i32")),
    "quantize_q8": ("mmvq", ("p", "i32", "p", "p", "i32")),
    "rms_norm_q8": ("mmvq", ("p", "p", "p", "i32", "f32", "p", "p")),
    "repack_blocks": ("mmvq", ("p", "p", "p", "i64", "i32", "i32", "i32")),
    **{f"mvq_{t}_{nc}_r{r}u{u}": ("mmvq", ("p", "i32", "i32", "p", "p", "p", "i32", "p", "p", "i32", "i32"))
       for t in ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_K", "q5_K", "q6_K")
       for nc, variants in mvq.VARIANTS.items() for r, u in variants},
    **{f"get_rows_split_{t}": ("mmvq", ("p", "i32", "i32", "p", "p", "f32"))
       for t in ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_K", "q5_K", "q6_K")},
}
WEIGHT_FILES = {
    "F32": "mv_float", "F16": "mv_float", "BF16": "mv_float", "Q4_0": "mv_q", "Q4_1": "mv_q",
    "Q5_0": "mv_q", "Q5_1": "mv_q", "Q8_0": "mv_q", "Q2_K": "mv_k", "Q3_K": "mv_k", "Q4_K": "mv_k",
    "Q5_K": "mv_k", "Q6_K": "mv_k",
}


def test_every_kernel_the_ops_launch_is_found_with_its_layout():
    table = kernel_table()
    for name, (file, layout) in EXPECTED.items():
        assert (table[name].file, table[name].layout) == (file, layout), name


def test_weight_kernels_come_from_the_macro():
    table = kernel_table()
    for type_name, file in WEIGHT_FILES.items():
        suffix = weight_kernel(type_name)
        assert suffix == type_name.split("_")[0].lower() + type_name[len(type_name.split("_")[0]):]
        assert table[f"mv_{suffix}"].file == file and table[f"mv_{suffix}"].layout == MV
        assert table[f"get_rows_{suffix}"].file == file and table[f"get_rows_{suffix}"].layout == GET_ROWS
    assert weight_kernel("IQ4_NL") is None and weight_kernel("Q8_K") is None


PRELUDE = """#pragma once
// a kernel-stamping macro, as RF_WEIGHT_KERNELS
#define STAMP(T, D) \\
    extern "C" __global__ void op_##T(const float* x, long long n, float s) { D::run(x, n, s); }
"""
SOURCE = """#include "rf_prelude.h"
extern "C" __global__ void scale(const float* __restrict__ x, float* __restrict__ y, int n) {}
/* extern "C" __global__ void commented_out(int n) {} */
STAMP(a, DecA)
STAMP(b_K, DecB)
"""


def _write(tmp_path, source: str, prelude: str = PRELUDE):
    (tmp_path / "rf_prelude.h").write_text(prelude)
    (tmp_path / "ops.hip").write_text(source)
    return scan(tmp_path)


def test_a_changed_signature_is_picked_up(tmp_path):
    table = _write(tmp_path, SOURCE)
    assert sorted(table) == ["op_a", "op_b_K", "scale"]
    assert table["scale"].layout == ("p", "p", "i32") and table["op_b_K"].layout == ("p", "i64", "f32")
    table = _write(tmp_path, SOURCE.replace("int n)", "int n, long long ld, float eps)"),
                   PRELUDE.replace("float s)", "float s, int k)"))
    assert table["scale"].layout == ("p", "p", "i32", "i64", "f32")
    assert table["op_a"].layout == ("p", "i64", "f32", "i32") and table["op_a"].file == "ops"


def test_unknown_types_and_duplicates_are_refused(tmp_path):
    with pytest.raises(KernelSourceError, match="double"):
        param_layout("k", "const float* x, double d")
    (tmp_path / "more.hip").write_text('extern "C" __global__ void scale(int n) {}\n')
    with pytest.raises(KernelSourceError, match="both"):
        _write(tmp_path, SOURCE)
