"""The AVX2 decode kernels (backends/cpu_kernels_avx2.py) against the portable ones (cpu_kernels.py).

- Integer sums: for every type the AVX2 set has, each block's integer dot (quants times int16
  activations) from the intrinsics equals the portable kernels' block dot exactly, on random bytes
  (every bit pattern of quants, high bits, fifth bits) and activations over the whole int16 range,
  from every starting block (groups of 4 that start anywhere, not only at multiples of 4) and for
  row widths that leave a tail (11 blocks, 3 super-blocks).
- Products: the two sets' mat-vecs agree to float rounding (their sums over blocks run in different
  orders), for 1 and 3 activation rows and fused parts; test_cpu_packed.py checks both sets against
  the float32 reference.
Skipped where the host has no AVX2 (the portable kernels are then the only ones, tested there).
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from numba import njit

from gguf_factory import random_blocks
from rocmforge_core import quants
from rocmforge_core.backends import cpu_kernels as k

pytestmark = pytest.mark.skipif(k.ISA != "avx2", reason="host without AVX2 (or ROCMFORGE_CPU_KERNELS=portable)")

if k.ISA == "avx2":
    from rocmforge_core.backends import cpu_kernels_avx2 as a

    def _simple(port_dot, sums4, sums1):
        @njit
        def dots(w, xq):
            nb = w.shape[0]
            port = np.empty(nb, np.int32)
            one = np.empty(nb, np.int32)
            four = np.empty((max(nb - 3, 0), 4), np.int32)
            for b in range(nb):
                port[b] = port_dot(w[b], xq[b])
                one[b] = sums1(w, b, xq)[0]
            for b in range(nb - 3):
                t = sums4(w, b, xq)
                for i in range(4):
                    four[b, i] = t[i]
            return port, one, four
        return dots

    @njit(inline="always")
    def _p_q8_0(bl, xb):
        return k._dot_bytes(bl, 2, xb)

    @njit(inline="always")
    def _p_q4_0(bl, xb):
        return k._dot_nibbles(bl, 2, xb)

    @njit(inline="always")
    def _p_q4_1(bl, xb):
        return k._dot_nibbles(bl, 4, xb)

    @njit(inline="always")
    def _p_q5_0(bl, xb):
        return k._dot_nibbles5(bl, 6, 2, xb)

    @njit(inline="always")
    def _p_q5_1(bl, xb):
        return k._dot_nibbles5(bl, 8, 4, xb)

    SIMPLE = {
        QT.Q8_0: _simple(_p_q8_0, a._sums4_q8_0, a._sums1_q8_0),
        QT.Q4_0: _simple(_p_q4_0, a._sums4_q4_0, a._sums1_q4_0),
        QT.Q4_1: _simple(_p_q4_1, a._sums4_q4_1, a._sums1_q4_1),
        QT.Q5_0: _simple(_p_q5_0, a._sums4_q5_0, a._sums1_q5_0),
        QT.Q5_1: _simple(_p_q5_1, a._sums4_q5_1, a._sums1_q5_1),
    }

    @njit
    def _dots_q4_k(w, xq):
        nb = w.shape[0]
        port = np.empty((nb, 8), np.int32)
        fast = np.empty((nb, 8), np.int32)
        for b in range(nb):
            bl = w[b]
            for pair in range(4):
                port[b, 2 * pair] = k._dot_low32(bl, 16 + 32 * pair, xq[8 * b + 2 * pair])
                port[b, 2 * pair + 1] = k._dot_high32(bl, 16 + 32 * pair, xq[8 * b + 2 * pair + 1])
            t = a._sums8_q4_k(w, b, xq)
            for i in range(8):
                fast[b, i] = t[i]
        return port, fast

    @njit
    def _dots_q6_k(w, xq):
        nb = w.shape[0]
        port = np.empty((nb, 16), np.int32)
        fast = np.empty((nb, 16), np.int32)
        for b in range(nb):
            bl = w[b]
            for h in range(2):
                x = 8 * b + 4 * h
                for half in range(2):
                    t = k._dot_q6k(bl, h, xq[x], xq[x + 1], xq[x + 2], xq[x + 3], 16 * half)
                    for g in range(4):
                        port[b, 8 * h + 2 * g + half] = t[g]
            t = a._sums16_q6_k(w, b, xq)
            for i in range(16):
                fast[b, i] = t[i]
        return port, fast

AVX2_TYPES = [QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0, QT.Q4_K, QT.Q6_K]


def _random(qtype, rows, rng):
    """Random bytes as blocks (rows, blocks per row, bytes) and int16 activations over the whole range."""
    block, size = quants.BLOCK_SIZES[qtype]
    n_blocks = 3 if block == 256 else 11
    w = rng.integers(0, 256, (rows, n_blocks, size), dtype=np.uint8)
    xq = rng.integers(-32767, 32768, (rows, n_blocks * block // 32, 32), dtype=np.int16)
    xq[0] = rng.choice([-32767, 32767], xq[0].shape)  # the extremes: sums near their largest
    return w, xq


@pytest.mark.parametrize("qtype", AVX2_TYPES, ids=lambda t: t.name)
def test_block_sums_equal_the_portable_kernels(qtype):
    rng = np.random.default_rng(int(qtype))
    w, xq = _random(qtype, 5, rng)
    for r in range(len(w)):
        if qtype in SIMPLE:
            port, one, four = SIMPLE[qtype](w[r], xq[r])
            np.testing.assert_array_equal(one, port)
            for b in range(len(four)):
                np.testing.assert_array_equal(four[b], port[b:b + 4])
        else:
            port, fast = (_dots_q4_k if qtype == QT.Q4_K else _dots_q6_k)(w[r], xq[r])
            np.testing.assert_array_equal(fast, port)


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("qtype", AVX2_TYPES, ids=lambda t: t.name)
def test_products_equal_the_portable_kernels(qtype, rows):
    rng = np.random.default_rng([int(qtype), rows, 7])
    block, size = quants.BLOCK_SIZES[qtype]
    n_in = 768 if block == 256 else 352 + 32 * rows  # 11 or 13 blocks: a tail after the groups of 4
    sizes = (37, 5, 19)  # three fused parts, as Q|K|V
    parts = [random_blocks(qtype, (n, n_in), rng).reshape(n, n_in // block, size) for n in sizes]
    ends = np.cumsum(sizes).astype(np.int64)
    x = rng.standard_normal((rows, n_in)).astype(np.float32)
    got = {}
    for isa in ("portable", "avx2"):
        out = np.full((rows, 3 + ends[-1]), np.nan, np.float32)
        k.kernel(qtype.name, isa)(tuple(parts), ends, x, k.F16, out, 3)
        got[isa] = out[:, 3:]
    assert k.kernel(qtype.name, "avx2") is not k.kernel(qtype.name, "portable")
    err = np.abs(got["avx2"] - got["portable"]).max() / np.abs(got["portable"]).max()
    assert err < 1e-5, err


def test_portable_kernels_chosen_on_request(monkeypatch):
    monkeypatch.setenv("ROCMFORGE_CPU_KERNELS", "portable")
    assert k._host_isa() == "portable"
    monkeypatch.delenv("ROCMFORGE_CPU_KERNELS")
    assert k._host_isa() == "avx2"
    assert k.kernel("Q8_0", "portable") is k.matvec_q8_0
    assert k.kernel("Q2_K") is k.matvec_q2_k  # no AVX2 kernel: the portable one
