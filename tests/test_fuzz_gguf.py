"""Fuzz the GGUF reader, the config, the model check and the tokenizer set-up on mutated small files.

Each example takes a good tiny model and mutates it: bit flips, cuts, length fields, value and tensor
type ids and tensor offsets overwritten with edge values. Every outcome must be a parse or a
`BadInputError` (the family of one-line, exit-2 errors): never another exception, never a hang.

The suite runs ROCMFORGE_FUZZ_EXAMPLES examples (default 150, about 10 s on two cores). To fuzz
longer locally:

    ROCMFORGE_FUZZ_EXAMPLES=20000 PYTHONPATH=. python -m pytest -q tests/test_fuzz_gguf.py -p no:timeout
"""

from __future__ import annotations

import itertools
import os
import struct

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from gguf_factory import tensor_info_positions  # noqa: E402
from tiny_byte_model import write_byte_model  # noqa: E402

from rocmforge_core.config import config_from_metadata  # noqa: E402
from rocmforge_core.errors import BadInputError  # noqa: E402
from rocmforge_core.gguf_file import GGUFFile  # noqa: E402
from rocmforge_core.model_check import check_model  # noqa: E402
from rocmforge_core.tokenizer import Tokenizer  # noqa: E402

EXAMPLES = int(os.environ.get("ROCMFORGE_FUZZ_EXAMPLES", "150"))
EDGE_U64 = [0, 1, 2, 3, 31, 32, 255, 2**16, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**62, 2**63, 2**64 - 1]
EDGE_U32 = [0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 99, 2**31, 2**32 - 1]  # value and tensor type ids


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    """(the good file's bytes, the positions of its header fields worth overwriting, a file counter)."""
    folder = tmp_path_factory.mktemp("fuzz")
    path = write_byte_model(folder / "seed.gguf", n_layers=1)
    raw = path.read_bytes()
    gf = GGUFFile(path)
    u64_fields = [8, 16]  # tensor and metadata counts
    u32_fields = [4]      # version
    for name in gf.tensors:
        pos = tensor_info_positions(path, name)
        u32_fields += [pos["n_dims"], pos["type"]]
        u64_fields += [pos["dims"], pos["offset"]]
    key_at = 24  # metadata entries: key length, key, value type (then the value)
    for _ in range(len(gf.metadata)):
        (n,) = struct.unpack_from("<Q", raw, key_at)
        u64_fields.append(key_at)
        u32_fields.append(key_at + 8 + n)
        key_at = _skip_value(raw, key_at + 8 + n)
    return raw, gf.data_offset, u64_fields, u32_fields, folder, itertools.count()


def _skip_value(raw: bytes, at: int) -> int:
    """The position after the value whose type id is at `at` (the seed's own, well-formed values)."""
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    (vtype,) = struct.unpack_from("<I", raw, at)
    at += 4
    if vtype == 8:
        return at + 8 + struct.unpack_from("<Q", raw, at)[0]
    if vtype != 9:
        return at + sizes[vtype]
    (itype, count) = struct.unpack_from("<IQ", raw, at)
    at += 12
    if itype != 8:
        return at + sizes[itype] * count
    for _ in range(count):
        at += 8 + struct.unpack_from("<Q", raw, at)[0]
    return at


def mutations(n_header: int, n_u64: int, n_u32: int):
    flip = st.tuples(st.just("flip"), st.integers(0, n_header - 1), st.integers(0, 7))
    cut = st.tuples(st.just("cut"), st.integers(0, n_header + 64), st.just(0))
    u64 = st.tuples(st.just("u64"), st.integers(0, n_u64 - 1), st.sampled_from(EDGE_U64))
    u32 = st.tuples(st.just("u32"), st.integers(0, n_u32 - 1), st.sampled_from(EDGE_U32))
    return st.lists(st.one_of(flip, cut, u64, u32), min_size=1, max_size=4)


def mutate(raw: bytes, ops, u64_fields, u32_fields) -> bytes:
    data = bytearray(raw)
    for kind, where, value in ops:
        if kind == "flip" and where < len(data):
            data[where] ^= 1 << value
        elif kind == "cut":
            del data[where:]
        elif kind == "u64" and u64_fields[where] + 8 <= len(data):
            struct.pack_into("<Q", data, u64_fields[where], value)
        elif kind == "u32" and u32_fields[where] + 4 <= len(data):
            struct.pack_into("<I", data, u32_fields[where], value)
    return bytes(data)


def load_everything(path) -> None:
    """What `inspect` and a load do before any compute: read, configure, check, set up the tokenizer."""
    gf = GGUFFile(path)
    config_from_metadata(gf.metadata)
    check_model(gf)
    Tokenizer.from_gguf(gf).encode("fuzz me, 123")


@pytest.mark.timeout(120)
def test_mutated_files_parse_or_fail_in_one_line(seed):
    raw, data_offset, u64_fields, u32_fields, folder, counter = seed

    @settings(max_examples=EXAMPLES, deadline=5000, derandomize=EXAMPLES <= 150, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(ops=mutations(data_offset, len(u64_fields), len(u32_fields)))
    def check(ops):
        path = folder / f"m{next(counter)}.gguf"
        path.write_bytes(mutate(raw, ops, u64_fields, u32_fields))
        try:
            load_everything(path)
        except BadInputError as exc:
            assert exc.one_line() and "\n" not in exc.one_line()
        finally:
            path.unlink()

    check()
