"""Memory honesty: what `inspect`, the banner and a load say a model takes, against what the backend
really allocates, and refusals before allocating when it will not fit."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from cli_run import assert_one_line_error, run_main
from rocmforge_core import context, footprint
from rocmforge_core import engine as engine_mod
from rocmforge_core.engine import create_engine
from rocmforge_core.errors import BadInputError
from rocmforge_core.gguf_file import GGUFFile
from rocmforge_core.model_check import check_model
from test_engine import random_llama


def _array_bytes(obj, seen=None) -> int:
    """Bytes of every distinct numpy array reachable from obj's dataclass fields and lists."""
    seen = set() if seen is None else seen
    if isinstance(obj, np.ndarray):
        base = obj if obj.base is None else obj.base
        if id(base) in seen:
            return 0
        seen.add(id(base))
        return base.nbytes if isinstance(base, np.ndarray) else obj.nbytes
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(_array_bytes(getattr(obj, f.name), seen) for f in dataclasses.fields(obj))
    if isinstance(obj, (list, tuple)):
        return sum(_array_bytes(o, seen) for o in obj)
    return 0


def test_cpu_weight_bytes_are_what_the_backend_holds(smollm2_path):
    async def go(numerics):
        async with create_engine(smollm2_path, backend="cpu", n_slots=1, n_ctx=512, numerics=numerics) as engine:
            return engine.footprint, _array_bytes(engine.model.weights)

    import asyncio
    fp, held = asyncio.run(go("float32"))
    assert fp.weights == held  # 538 MB for the 98 MB file: float32 copies of every tensor
    assert fp.kv == 2 * 30 * 3 * 64 * 4 * 512
    fp, held = asyncio.run(go(None))  # the default, packed: the file's map (counted once) and norms
    packed = sum(t.n_bytes for t in GGUFFile(smollm2_path).tensors.values())
    assert fp.weights == packed + footprint.PACKED_SCRATCH_BYTES
    assert held <= smollm2_path.stat().st_size + 30 * 2 * 576 * 4


def test_refused_before_the_weights_are_allocated(tmp_path, monkeypatch):
    path = random_llama(tmp_path / "m.gguf")
    need = footprint.weight_bytes(GGUFFile(path), "cpu", "float32")
    monkeypatch.setattr(context, "host_free_bytes", lambda: need - 1)
    import rocmforge_core.models as models

    def never(*a, **k):
        raise AssertionError("load_model ran although the weights cannot fit")

    monkeypatch.setattr(models, "load_model", never)
    with pytest.raises(BadInputError) as err:
        create_engine(path, backend="cpu", numerics="float32")
    line = err.value.one_line()
    assert "weights need" in line and "cpu backend" in line and "float32 copies" in line


def test_a_context_that_cannot_fit_is_refused(tmp_path, monkeypatch):
    path = random_llama(tmp_path / "m.gguf")
    gf = GGUFFile(path)
    weights = footprint.weight_bytes(gf, "cpu", "packed")
    kv = footprint.kv_bytes(check_model(gf), 8192, 4)

    def free_after(left: int):
        """Free memory as a loading process sees it: all of weights + cache before, `left` after."""
        calls = []
        return lambda: (calls.append(1), weights + kv if len(calls) == 1 else left)[1]

    monkeypatch.setattr(context, "host_free_bytes", free_after(kv - 1))
    with pytest.raises(BadInputError, match="8,192-token context needs"):
        create_engine(path, backend="cpu", n_ctx=8192, n_slots=4)
    engine_mod._LOADED.clear()
    monkeypatch.setattr(context, "host_free_bytes", free_after(kv + 1))
    engine = create_engine(path, backend="cpu", n_ctx=8192, n_slots=4)
    assert engine.footprint.total == weights + kv


def test_inspect_says_what_each_backend_needs(tmp_path):
    path = random_llama(tmp_path / "m.gguf")
    r = run_main("inspect", str(path), "--json")
    assert r.code == 0, r.stderr
    mem = json.loads(r.stdout)["memory"]
    gf = GGUFFile(path)
    params = sum(t.n_elements for t in gf.tensors.values())
    assert mem["cpu_float32"]["weights"] == 4 * params
    assert mem["cpu"]["weights"] == sum(t.n_bytes for t in gf.tensors.values()) + footprint.PACKED_SCRATCH_BYTES
    assert mem["gpu"]["weights"] == int(sum(t.n_bytes for t in gf.tensors.values()) * footprint.GPU_POOL_OVERHEAD)
    assert mem["gpu"]["kv"] * 2 == mem["cpu"]["kv"]  # f16 against float32
    assert mem["ctx"] == min(check_model(gf).context_length, context.DEFAULT_CAP)


def test_generate_says_it_in_one_line(tmp_path, monkeypatch):
    path = random_llama(tmp_path / "m.gguf")
    monkeypatch.setattr(context, "host_free_bytes", lambda: 1000)
    r = run_main("generate", str(path), "--backend", "cpu", "-p", "hello", "-n", "2")
    assert_one_line_error(r, "weights need", 2)
