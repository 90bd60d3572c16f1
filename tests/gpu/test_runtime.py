"""The runtime interface itself: device info, the on-disk compile cache, copies, events, pre-packed
launch arguments, and graph capture/replay (emulated as recordings on emu)."""

from __future__ import annotations

import numpy as np
import pytest

from rocmforge_core.gpu.runtime import PackedArgs, cache_dir


def test_device_info(rt, backend_name):
    dev = rt.device
    assert dev.name and dev.arch and rt.compiler_version
    if backend_name == "emu":
        assert dev.warp_size == 1
    else:
        assert dev.warp_size in (32, 64)  # 64 on CDNA, 32 on RDNA and NVIDIA
        assert dev.total_memory > 2**30 and dev.multiprocessors > 0 and dev.max_threads >= 256


def test_compile_is_cached_on_disk(rt, tmp_path, monkeypatch):
    monkeypatch.setenv("ROCMFORGE_HOME", str(tmp_path))
    first = rt.compile("norm")
    files = list(cache_dir().glob("norm-*.bin"))
    assert len(files) == 1 and files[0].read_bytes() == first
    calls = []
    original = rt._compile
    monkeypatch.setattr(rt, "_compile", lambda *a: calls.append(a) or original(*a))
    assert rt.compile("norm") == first and calls == []
    rt.compile("norm", {"RF_UNUSED": 1})  # other defines: another key, a real compile
    assert len(calls) == 1 and len(list(cache_dir().glob("norm-*.bin"))) == 2


def test_copies_memset_and_events(rt):
    stream = rt.stream_create()
    host = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    a, b = rt.alloc(host.nbytes), rt.alloc(host.nbytes)
    try:
        start, stop = rt.event_create(), rt.event_create()
        rt.event_record(start, stream)
        rt.copy_htod(a, host, host.nbytes, stream)
        rt.copy_dtod(b, a, host.nbytes, stream)
        rt.memset8(a, 0xFF, 400, stream)
        back_a, back_b = np.empty_like(host), np.empty_like(host)
        rt.copy_dtoh(back_a, a, host.nbytes, stream)
        rt.copy_dtoh(back_b, b, host.nbytes, stream)
        rt.event_record(stop, stream)
        rt.event_synchronize(stop)
        rt.stream_synchronize(stream)
        assert np.array_equal(back_b, host)
        assert np.all(np.isnan(back_a[:100])) and np.array_equal(back_a[100:], host[100:])
        assert rt.event_elapsed_ms(start, stop) >= 0.0
        rt.event_destroy(start)
        rt.event_destroy(stop)
    finally:
        rt.free(a)
        rt.free(b)
        rt.stream_destroy(stream)


def test_packed_args_are_reused_across_launches(ops):
    """One PackedArgs per kernel: launches overwrite its values, the driver copies them at launch."""
    x = np.arange(300, dtype=np.float32)
    d = ops.upload(x)
    outs = [ops.scale(d, s) for s in (2.0, -1.0, 0.5)]
    for s, out in zip((2.0, -1.0, 0.5), outs):
        assert np.array_equal(ops.to_host(out), x * np.float32(s))
    packed = PackedArgs(("p", "i32", "f32", "i64"), (7, -3, 1.5, 2**40))
    assert packed.values() == [7, -3, 1.5, 2**40]
    packed.set(1, 9)
    assert packed.values()[1] == 9


def test_graph_capture_and_replay(ops, backend_name):
    rt = ops.rt
    n = 4099
    x, y = ops.empty((n,)), ops.empty((n,))
    out = ops.empty((n,))
    tmp = ops.empty((n,))
    ops.sync()
    stream = ops.stream
    rt.capture_begin(stream)
    ops._elementwise("add_f32", n, x.ptr, y.ptr, tmp.ptr, n)      # tmp = x + y
    ops._elementwise("scale_f32", n, tmp.ptr, out.ptr, n, 3.0)   # out = 3 (x + y)
    graph = rt.capture_end(stream)
    try:
        rng = np.random.default_rng(5)
        for _ in range(3):  # new inputs in the same buffers, the same graph
            hx, hy = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
            rt.copy_htod(x.ptr, hx, hx.nbytes, stream)
            rt.copy_htod(y.ptr, hy, hy.nbytes, stream)
            rt.memset8(out.ptr, 0xFF, out.nbytes, stream)
            rt.graph_launch(graph, stream)
            np.testing.assert_allclose(ops.to_host(out), 3 * (hx + hy), rtol=1e-6)
    finally:
        rt.graph_destroy(graph)


def test_packed_args_pack_like_ctypes_fields():
    """set_all packs every value in one pass; the bytes equal field-by-field ctypes assignment, for
    layouts that need padding (an int32 before a pointer) and for edge values."""
    import ctypes
    import random

    rng = random.Random(3)
    for _ in range(200):
        types = [rng.choice(("p", "i32", "i64", "f32")) for _ in range(rng.randint(1, 19))]
        pick = {"p": lambda: rng.choice((0, 1, 2**64 - 1, rng.randrange(2**48))),
                "i32": lambda: rng.choice((-2**31, 2**31 - 1, 0, rng.randrange(-999, 999))),
                "i64": lambda: rng.choice((-2**63, 2**63 - 1, rng.randrange(-2**40, 2**40))),
                "f32": lambda: rng.choice((0.1, -3.5e38, 1e-45, rng.uniform(-9, 9)))}
        values = [pick[t]() for t in types]
        packed = PackedArgs(types)
        packed.set_all(values)
        ref = PackedArgs(types)
        for i, v in enumerate(values):
            ref.set(i, v)
        assert bytes(memoryview(packed._struct)) == bytes(memoryview(ref._struct)), types
        assert packed.values() == ref.values()
    wraps = PackedArgs(("p", "i32"))
    wraps.set_all((-1, 5))  # outside struct's range: ctypes' own conversion, as before
    assert wraps.values() == [2**64 - 1, 5]
