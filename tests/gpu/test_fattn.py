"""Prompt attention on the matrix units (hip_kernels/fattn.hip) against the CPU backend's attention.

Prompt chunks of one sequence after a cached history, GQA ratios 1, 3 and 8, head dims 16, 64 and 128,
a window shorter than the chunk, chunk lengths that are not a multiple of the 32-row block or 32-key
tile, f32 and f16 caches. Queries, keys, values and the softmax weights pass through f16 (each
rounded by at most 2^-11 relative), so the outputs are held to 1e-2 of their largest value: an error
in masking, GQA indexing or the online softmax moves them by tens of percent.
"""

from __future__ import annotations

import numpy as np
import pytest

from rocmforge_core.backends.cpu import CpuBackend
from rocmforge_core.kv_cache import KVCache
from test_kernels import rel_err, rng_for

cpu = CpuBackend()
FLASH_BOUND = 1e-2


def _caches(ops, n_slots, n_kv, n_ctx, hd, rng):
    """A 1-layer device cache and its CPU twin holding the same random history (f16-exact values)."""
    cache = ops.make_cache(1, n_slots, n_ctx, n_kv, hd)
    host = KVCache(1, n_slots, n_ctx, n_kv, hd)
    for dev, ref in ((cache.k[0], host.k[0]), (cache.v[0], host.v[0])):
        ref[:] = rng.standard_normal(ref.shape).astype(np.float16)
        data = np.ascontiguousarray(ref.astype(cache.dtype))
        ops.rt.copy_htod(dev, data, data.nbytes, ops.stream)
    ops.sync()
    return cache, host


@pytest.mark.parametrize("cache_type", ["f16", "f32"])
@pytest.mark.parametrize("heads,n_kv,hd", [(4, 4, 16), (6, 2, 64), (8, 1, 128)])
@pytest.mark.parametrize("window", [None, 11])
def test_flash_prefill(ops_q8, cache_type, heads, n_kv, hd, window, request, monkeypatch):
    ops = ops_q8
    monkeypatch.setattr(ops, "kv_cache_type", cache_type)
    rng = rng_for(request)
    n_ctx = 96
    cache, host = _caches(ops, 2, n_kv, n_ctx, hd, rng)
    names = []
    launch = ops.launch
    monkeypatch.setattr(ops, "launch", lambda name, *a: (names.append(name), launch(name, *a)))
    for slot, start, n in ((1, 0, 37), (0, 21, 70)):
        q = rng.standard_normal((n, heads, hd)).astype(np.float32)
        k = rng.standard_normal((n, n_kv, hd)).astype(np.float32)
        v = rng.standard_normal((n, n_kv, hd)).astype(np.float32)
        scale = hd ** -0.5
        ref = cpu.attention(q, k, v, host, 0, [slot], [start], [n], scale, window)
        got = ops.attention(ops.upload(q), ops.upload(k), ops.upload(v), cache, 0, [slot], [start], [n], scale,
                            window)
        assert rel_err(ops.to_host(got), ref) < FLASH_BOUND, (slot, start, n)
    assert f"fattn_{cache_type}" in names


def test_short_chunks_and_batches_keep_the_row_kernel(ops_q8):
    assert not ops_q8._flash_prefill(15, 64, [0])
    assert not ops_q8._flash_prefill(40, 64, [0, 1])
    assert not ops_q8._flash_prefill(40, 256, [0])
    assert ops_q8._flash_prefill(40, 64, [3])
