"""The GPU backend: the same ops as backends/cpu.py, run by hip_kernels/ on a GpuRuntime (hip or cuda).

Weights are uploaded once as their raw GGUF blocks (mat-vec kernels read the packed blocks), norm
vectors as float32, and the KV cache lives on the device. Activations are DeviceArrays: contiguous
float32 device buffers from a stream-ordered pool. Only token ids go in and logits come out: the
projection onto the vocabulary returns a host numpy array, every other op stays on the device.

The model code slices fused projections (`qkv[:, a:b]`) and keeps rows (`x[keep]`); DeviceArray
supports exactly those as copies or views, plus `reshape` and `np.asarray` (a download).

Decode steps replay a captured graph (one per model, cache and batch size; ROCMFORGE_GPU_GRAPHS=0
turns this off): the per-op host cost (argument packing, one driver call per kernel) is what bounds
decode speed for small models, and a replay pays it once per step. The kernels already read every
per-step value (token ids, positions, cache slots; a row's attention length is its position + 1) from
device buffers, so a graph captures the step with those buffers at fixed addresses and each replay
only uploads new contents. Prefill keeps the op-by-op path, as does any step whose capture fails.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from rocmforge_core.backends.cpu import RopeSpec
from rocmforge_core.errors import BadInputError, UnsupportedModelError
from rocmforge_core.gpu import mvq
from rocmforge_core.gpu.runtime import GpuError, GpuRuntime, PackedArgs
from rocmforge_core.kv_cache import KVCache

# GGUF type name -> (kernel suffix, kernel file). Each file holds mv_<suffix> and get_rows_<suffix>.
WEIGHT_KERNELS = {
    "F32": ("f32", "mv_float"), "F16": ("f16", "mv_float"), "BF16": ("bf16", "mv_float"),
    "Q4_0": ("q4_0", "mv_q"), "Q4_1": ("q4_1", "mv_q"), "Q5_0": ("q5_0", "mv_q"),
    "Q5_1": ("q5_1", "mv_q"), "Q8_0": ("q8_0", "mv_q"),
    "Q2_K": ("q2_K", "mv_k"), "Q3_K": ("q3_K", "mv_k"), "Q4_K": ("q4_K", "mv_k"),
    "Q5_K": ("q5_K", "mv_k"), "Q6_K": ("q6_K", "mv_k"),
}
MV_ROWS_PER_PASS = 4  # RF_MV_MAXB in the prelude
ATT_MAX_HEAD_DIM = 256  # RF_ATT_MAX_HD in attention.hip
LOGIT_TENSORS = ("output.weight", "token_embd.weight")

# Kernel argument layouts ("p" device pointer, "i32", "i64", "f32"), in source order.
SIGNATURES = {
    "mv": ("p", "i64", "p", "i32", "p", "i32", "p", "i32", "i32", "i32"),
    "get_rows": ("p", "i64", "p", "p", "i32", "f32"),
    "rms_norm_f32": ("p", "p", "p", "i32", "f32"),
    "add_f32": ("p", "p", "p", "i64"),
    "scale_f32": ("p", "p", "i64", "f32"),
    "softcap_f32": ("p", "p", "i64", "f32"),
    "copy2d_f32": ("p", "i64", "p", "i64", "i32"),
    "gather_rows_f32": ("p", "p", "p", "i32"),
    "swiglu_f32": ("p", "p", "i32", "i32"),
    "geglu_f32": ("p", "p", "i32", "i32"),
    "rope_f32": ("p", "p", "p", "p", "p", "i32", "i32", "i32", "i32"),
    "kv_append_f32": ("p", "p", "p", "p", "p", "p", "i32", "i32", "i32"),
    "rope_kv_append_f32": ("p", "p", "p", "p", "p", "p", "p", "p", "i32", "i32", "i32", "i32", "i32"),
    "attn_f32": ("p", "p", "p", "p", "p", "p", "i32", "i32", "i32", "i32", "f32", "i32"),
    "softmax_f32": ("p", "p", "i32"),
    "argmax_f32": ("p", "p", "i32"),
    "dot4_i8_rows": ("p", "p", "p", "i32", "i32"),
    "mvq": ("p", "i32", "i32", "p", "p", "p", "i32", "p", "p", "i32", "i32"),
    "get_rows_split": ("p", "i32", "i32", "p", "p", "f32"),
    "repack_blocks": ("p", "p", "i64", "i32", "i32", "i32"),
    "quantize_q8": ("p", "i32", "p", "p", "i32"),
    "rms_norm_q8": ("p", "p", "p", "i32", "f32", "p", "p"),
}
KERNEL_FILES = {
    "rms_norm_f32": "norm", "add_f32": "elementwise", "scale_f32": "elementwise",
    "softcap_f32": "elementwise", "copy2d_f32": "elementwise", "gather_rows_f32": "elementwise",
    "dot4_i8_rows": "elementwise", "swiglu_f32": "activation", "geglu_f32": "activation",
    "rope_f32": "rope", "kv_append_f32": "rope", "rope_kv_append_f32": "rope", "attn_f32": "attention",
    "softmax_f32": "softmax", "argmax_f32": "softmax", "quantize_q8": "mmvq", "rms_norm_q8": "mmvq",
    "repack_blocks": "mmvq",
}


def _signature(kernel: str) -> tuple[str, ...]:
    if kernel.startswith("mvq_"):
        return SIGNATURES["mvq"]
    if kernel.startswith("get_rows_split_"):
        return SIGNATURES["get_rows_split"]
    if kernel.startswith("mv_"):
        return SIGNATURES["mv"]
    if kernel.startswith("get_rows_"):
        return SIGNATURES["get_rows"]
    return SIGNATURES[kernel]


def _kernel_file(kernel: str) -> str:
    if kernel.startswith(("mvq_", "get_rows_split_")):
        return "mmvq"
    for prefix in ("mv_", "get_rows_"):
        if kernel.startswith(prefix):
            suffix = kernel[len(prefix):]
            return next(f for s, f in WEIGHT_KERNELS.values() if s == suffix)
    return KERNEL_FILES[kernel]


# ---------------------------------------------------------------- device memory

class _Block:
    """One pooled allocation; going out of scope returns it to its pool (stream order keeps reuse safe:
    all work runs on one stream, so a later kernel cannot overtake an earlier reader)."""

    __slots__ = ("pool", "ptr", "size")

    def __init__(self, pool: "BufferPool", ptr: int, size: int):
        self.pool, self.ptr, self.size = pool, ptr, size

    def __del__(self):
        pool = self.pool
        if pool is not None and not pool.closed:
            pool.free_lists.setdefault(self.size, []).append(self.ptr)


class BufferPool:
    """Size-class free lists over runtime allocations: decode steps allocate the same sizes every
    step, so after the first step no allocation reaches the driver."""

    def __init__(self, rt: GpuRuntime, poison_stream: Any = None):
        self.rt = rt
        # ROCMFORGE_GPU_POISON=1: fill every buffer handed out with NaN, so reads of unwritten memory
        # show up as NaN instead of plausible stale values (a debugging aid; costs a memset each).
        self.poison_stream = poison_stream if os.environ.get("ROCMFORGE_GPU_POISON") == "1" else None
        self.free_lists: dict[int, list[int]] = {}
        self.owned: list[int] = []
        self.closed = False

    @staticmethod
    def size_class(nbytes: int) -> int:
        n = max(256, int(nbytes))
        if n <= 1 << 20:
            return 1 << (n - 1).bit_length()
        return (n + (1 << 20) - 1) >> 20 << 20  # whole MiB above 1 MiB

    def get(self, nbytes: int) -> _Block:
        size = self.size_class(nbytes)
        free = self.free_lists.get(size)
        if free:
            ptr = free.pop()
        else:
            ptr = self.rt.alloc(size)
            self.owned.append(ptr)
        if self.poison_stream is not None:
            self.rt.memset8(ptr, 0xFF, size, self.poison_stream)
        return _Block(self, ptr, size)

    def close(self) -> None:
        """Give every allocation back to the driver (after the device is idle)."""
        if self.closed:
            return
        self.closed = True
        self.rt.synchronize()
        for ptr in self.owned:
            self.rt.free(ptr)
        self.owned.clear()
        self.free_lists.clear()


_F32 = np.dtype(np.float32)


class DeviceArray:
    """A contiguous device array (float32 unless said otherwise). `block` keeps the memory alive."""

    __slots__ = ("ops", "ptr", "shape", "dtype", "block", "size", "q8", "__weakref__")

    def __init__(self, ops: "GpuOps", ptr: int, shape: tuple[int, ...], dtype=_F32, block: Any = None):
        # Built for every op output: plain-int arithmetic only (numpy scalar math costs microseconds).
        self.ops, self.ptr, self.shape = ops, ptr, tuple(map(int, shape))
        self.dtype = dtype if dtype is _F32 else np.dtype(dtype)
        self.block = block
        self.size = math.prod(self.shape)
        self.q8 = None  # (xq, xd): the same rows quantized to 8 bits, when the producer made them

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype.name}, ptr=0x{self.ptr:x})"

    def reshape(self, *shape) -> "DeviceArray":
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        shape = list(shape)
        if -1 in shape:
            known = math.prod(s for s in shape if s != -1)
            shape[shape.index(-1)] = self.size // max(1, known)
        if math.prod(shape) != self.size:
            raise ValueError(f"cannot reshape {self.shape} into {tuple(shape)}")
        return DeviceArray(self.ops, self.ptr, tuple(shape), self.dtype, self)

    def row_view(self, lo: int, hi: int) -> "DeviceArray":
        """Rows lo..hi-1 along the first axis, without a copy."""
        row = self.nbytes // max(1, self.shape[0])
        return DeviceArray(self.ops, self.ptr + lo * row, (hi - lo,) + self.shape[1:], self.dtype, self)

    def __getitem__(self, key) -> "DeviceArray":
        if isinstance(key, (int, np.integer)):
            k = int(key) + (self.shape[0] if key < 0 else 0)
            return self.row_view(k, k + 1).reshape(self.shape[1:] or (1,))
        if isinstance(key, slice) and key.step in (None, 1):
            lo, hi, _ = key.indices(self.shape[0])
            return self.row_view(lo, max(lo, hi))
        if isinstance(key, (np.ndarray, list)):
            return self.ops.take_rows(self, np.asarray(key, dtype=np.int64).reshape(-1))
        if (isinstance(key, tuple) and len(key) == 2 and key[0] == slice(None) and isinstance(key[1], slice)
                and key[1].step in (None, 1) and self.ndim == 2):
            lo, hi, _ = key[1].indices(self.shape[1])
            return self.ops.columns(self, lo, hi)
        raise TypeError(f"DeviceArray does not support indexing with {key!r}")

    def numpy(self) -> np.ndarray:
        return self.ops.to_host(self)

    def __array__(self, dtype=None, copy=None):
        a = self.numpy()
        return a if dtype is None else a.astype(dtype)


# ---------------------------------------------------------------- weights and cache

@dataclass
class _Part:
    """One GGUF weight, packed blocks on the device: rows [col_off, col_off + n_out) of the output."""

    block: Any
    kernel: str       # suffix, e.g. "q4_1"
    n_out: int
    n_in: int
    row_bytes: int
    col_off: int
    type_name: str = ""
    split: bool = False  # blocks split into [bulk | meta] for the int8 mat-vec (gpu/mvq.py)


@dataclass
class GpuLinear:
    """y = x @ W.T (+ bias) with W one or more GGUF weights stacked along the output dimension."""

    parts: list[_Part]
    n_out: int
    n_in: int
    bias: DeviceArray | None = None
    logits: bool = False  # the vocabulary projection: its result goes back to the host


class GpuKVCache:
    """The KV cache on the device: per layer, keys and values (n_slots, n_kv_heads, n_ctx, head_dim)."""

    def __init__(self, ops: "GpuOps", n_layers: int, n_slots: int, n_ctx: int, n_kv_heads: int, head_dim: int):
        if n_slots < 1 or n_ctx < 1:
            raise BadInputError(f"a KV cache needs at least one slot and one position "
                                f"(got {n_slots} slots, {n_ctx} positions)")
        self.ops = ops
        self.n_layers, self.n_slots, self.n_ctx = n_layers, n_slots, n_ctx
        self.n_kv_heads, self.head_dim = n_kv_heads, head_dim
        self.shape = (n_slots, n_kv_heads, n_ctx, head_dim)
        layer_bytes = 4 * n_slots * n_kv_heads * n_ctx * head_dim
        rt = ops.rt
        self._ptrs: list[int] = []
        try:
            for _ in range(2 * n_layers):
                ptr = rt.alloc(layer_bytes)
                self._ptrs.append(ptr)
                rt.memset8(ptr, 0, layer_bytes, ops.stream)  # unwritten positions read as 0, as on the CPU
        except Exception:
            self.close()
            raise
        self.k = self._ptrs[:n_layers]
        self.v = self._ptrs[n_layers:]
        self.nbytes = 2 * n_layers * layer_bytes
        # Captured decode steps that write this cache, by (id(model), batch size); None: capture failed,
        # run that step op by op. They bake in the cache's addresses, so they die with it.
        self.graphs: dict[tuple[int, int], "DecodeGraph | None"] = {}

    check = KVCache.check  # same bounds rules and messages as the CPU cache

    def keys(self, layer: int, slot: int, lo: int, hi: int) -> np.ndarray:
        return self._download(self.k[layer])[slot, :, lo:hi]

    def values(self, layer: int, slot: int, lo: int, hi: int) -> np.ndarray:
        return self._download(self.v[layer])[slot, :, lo:hi]

    def _download(self, ptr: int) -> np.ndarray:
        out = np.empty(self.shape, dtype=np.float32)
        self.ops.rt.copy_dtoh(out, ptr, out.nbytes, self.ops.stream)
        self.ops.rt.stream_synchronize(self.ops.stream)
        return out

    def close(self) -> None:
        graphs, self.graphs = getattr(self, "graphs", {}), {}
        for g in graphs.values():
            if g is not None:
                g.close()
        ptrs, self._ptrs = self._ptrs, []
        if ptrs:
            self.ops.rt.synchronize()
            for ptr in ptrs:
                self.ops.rt.free(ptr)

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the driver frees everything anyway
            pass


# ---------------------------------------------------------------- decode graphs

class DecodeGraph:
    """One captured decode step of `batch` rows for one model and cache.

    Everything the captured kernels touch stays allocated at a fixed address until `close`: the
    weights and the rope tables (referenced here), the cache (the owner of this object), the step's
    inputs and every intermediate (this graph's own pool, never shared with the op-by-op path).
    `inputs` holds int32 [tokens | positions | slots], uploaded before each replay.
    """

    def __init__(self, ops: "GpuOps", model: Any, batch: int):
        self.ops, self.model, self.batch = ops, model, batch
        self.pool = BufferPool(ops.rt, ops.stream)
        block = self.pool.get(3 * batch * 4)
        self.inputs = block
        i32 = np.dtype(np.int32)
        self.tokens = DeviceArray(ops, block.ptr, (batch,), i32, block)
        self.positions = DeviceArray(ops, block.ptr + 4 * batch, (batch,), i32, block)
        self.slots = DeviceArray(ops, block.ptr + 8 * batch, (batch,), i32, block)
        self.logits: DeviceArray | None = None  # set by the step's vocabulary projection
        self.keep: list[Any] = []               # rope tables the kernels read
        self.capturing = False
        self.exe: Any = None

    def upload_inputs(self, tokens: np.ndarray, slots: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Queue the step's inputs; returns the host array, which must live until the next sync."""
        host = np.concatenate([tokens, positions, slots]).astype(np.int32)
        self.ops.rt.copy_htod(self.inputs.ptr, host, host.nbytes, self.ops.stream)
        return host

    def download_logits(self) -> np.ndarray:
        """The step's logits on the host, softcapped exactly as the op-by-op path does (on the host)."""
        ops = self.ops
        out = np.empty(self.logits.shape, dtype=np.float32)
        ops.rt.copy_dtoh(out, self.logits.ptr, out.nbytes, ops.stream)
        ops.sync()
        cap = self.model.args.final_softcap
        return ops.softcap(out, cap) if cap else out

    def close(self) -> None:
        if self.exe is not None:
            exe, self.exe = self.exe, None
            self.ops.rt.synchronize()
            self.ops.rt.graph_destroy(exe)
        self.logits = None
        self.tokens = self.positions = self.slots = None
        self.inputs = None
        self.pool.close()


# ---------------------------------------------------------------- the ops

class GpuOps:
    """The backend ops object (see backends/cpu.py for the contract of each method)."""

    def __init__(self, rt: GpuRuntime, name: str | None = None):
        self.rt = rt
        self.name = name or rt.name
        self.stream = rt.stream_create()
        self.pool = BufferPool(rt, self.stream)
        self._modules: dict[str, Any] = {}
        self._functions: dict[str, tuple[Any, PackedArgs]] = {}
        self._rope_tables: dict[RopeSpec, tuple[int, DeviceArray, DeviceArray]] = {}
        self._uploads: dict[str, tuple[bytes, DeviceArray]] = {}
        self._lock = threading.Lock()
        self._in_flight: list[np.ndarray] = []
        self._row_key: tuple | None = None
        self._row_arrays: tuple[DeviceArray, DeviceArray] | None = None
        # Decode through captured graphs (see the module docstring); `_graph` is the step being
        # warmed up or captured: ops then draw memory from its pool and read its input buffers.
        self.use_graphs = os.environ.get("ROCMFORGE_GPU_GRAPHS", "1") != "0"
        # Projections read 8-bit activations (gpu/mvq.py) for the weight types that have the int8
        # mat-vec; ROCMFORGE_GPU_Q8=0 keeps every product in float32 (the CPU's arithmetic, to 1e-5).
        self.q8_activations = os.environ.get("ROCMFORGE_GPU_Q8", "1") != "0"
        self._graph: DecodeGraph | None = None
        self.graph_failures: list[str] = []  # why a capture fell back to op-by-op (for diagnostics)
        dev = rt.device
        self.warp = dev.warp_size
        self.max_threads = max(1, dev.max_threads)
        self.grid_cap = max(1, dev.multiprocessors) * 16

    @property
    def device(self):
        return self.rt.device

    # ---- kernels
    def kernel(self, name: str) -> tuple[Any, PackedArgs]:
        """(function, its reusable PackedArgs); compiles and loads the kernel's file on first use."""
        entry = self._functions.get(name)
        if entry is None:
            with self._lock:
                file = _kernel_file(name)
                if file not in self._modules:
                    self._modules[file] = self.rt.load_module(self.rt.compile(file))
                fn = self.rt.get_function(self._modules[file], name)
                entry = self._functions[name] = (fn, PackedArgs(_signature(name)))
        return entry

    def launch(self, name: str, grid, block: int, *args) -> None:
        fn, packed = self.kernel(name)
        packed.set_all(args)
        grid = tuple(grid) + (1,) * (3 - len(grid))
        self.rt.launch(fn, grid, (block, 1, 1), packed, self.stream)

    def threads(self, want: int) -> int:
        """A block size: at least one warp, a multiple of the warp size, within the device limit."""
        w = self.warp
        n = max(w, (int(want) + w - 1) // w * w)
        return max(1, min(n, self.max_threads // w * w or 1))

    # ---- memory
    def empty(self, shape: Sequence[int], dtype=_F32) -> DeviceArray:
        dtype = dtype if dtype is _F32 else np.dtype(dtype)
        shape = tuple(map(int, shape))
        block = self.pool.get(math.prod(shape) * dtype.itemsize)
        return DeviceArray(self, block.ptr, shape, dtype, block)

    def upload(self, host: np.ndarray, dtype=None) -> DeviceArray:
        if self._graph is not None and self._graph.capturing:
            # A captured copy would re-read this host array at every replay, long after it is gone.
            raise GpuError("host upload inside a decode graph capture")
        host = np.ascontiguousarray(host if dtype is None else np.asarray(host, dtype=dtype))
        out = self.empty(host.shape, host.dtype)
        if host.nbytes:
            self.rt.copy_htod(out.ptr, host, host.nbytes, self.stream)
            self._in_flight.append(host)  # an async copy may read it until the next synchronisation
        return out

    def upload_cached(self, key: str, host: np.ndarray) -> DeviceArray:
        """Upload small per-step index arrays once per distinct content (shared by all layers)."""
        if self._graph is not None:  # the graph's fixed input buffer, filled before the step
            return {"tokens": self._graph.tokens, "positions": self._graph.positions}[key]
        host = np.ascontiguousarray(host, dtype=np.int32)
        raw = host.tobytes()
        hit = self._uploads.get(key)
        if hit is not None and hit[0] == raw:
            return hit[1]
        arr = self.upload(host)
        self._uploads[key] = (raw, arr)
        return arr

    def to_host(self, x) -> np.ndarray:
        if isinstance(x, np.ndarray):
            return x
        out = np.empty(x.shape, dtype=x.dtype)
        if out.nbytes:
            self.rt.copy_dtoh(out, x.ptr, out.nbytes, self.stream)
        self.sync()
        return out

    def sync(self) -> None:
        self.rt.stream_synchronize(self.stream)
        self._in_flight.clear()

    def close(self) -> None:
        self._uploads.clear()
        self._row_key = self._row_arrays = None
        self._rope_tables.clear()
        self.pool.close()

    # ---- weights
    def linear(self, gguf_file, names: Sequence[str], bias_names: Sequence[str] | None = None) -> GpuLinear:
        parts, off, n_in = [], 0, None
        for name in names:
            info = gguf_file.tensor(name)
            kname = WEIGHT_KERNELS.get(info.qtype.name)
            if kname is None:
                raise UnsupportedModelError(f"{name}: tensor type {info.qtype.name} has no GPU kernel",
                                            hint="use --backend cpu")
            n_out, k = int(info.shape[0]), int(np.prod(info.shape[1:], dtype=np.int64))
            if n_in not in (None, k):
                raise BadInputError(f"{name} has {k} inputs, the fused weights before it {n_in}")
            n_in = k
            raw = np.ascontiguousarray(np.asarray(info.data).reshape(-1).view(np.uint8))
            split = self.q8_activations and mvq.splits(info.qtype.name, k)
            block = mvq.split_on_device(self, raw, info.qtype.name) if split else self.upload(raw)
            parts.append(_Part(block, kname[0], n_out, k, raw.nbytes // n_out, off, info.qtype.name, split))
            off += n_out
        bias = None
        if bias_names:
            bias = self.upload(np.concatenate([gguf_file.dequant(n).reshape(-1) for n in bias_names]),
                               np.float32)
        return GpuLinear(parts, off, n_in, bias, logits=names[0] in LOGIT_TENSORS)

    def vector(self, gguf_file, name: str) -> DeviceArray:
        return self.upload(gguf_file.dequant(name).reshape(-1), np.float32)

    def make_cache(self, n_layers: int, n_slots: int, n_ctx: int, n_kv_heads: int, head_dim: int) -> GpuKVCache:
        if head_dim > ATT_MAX_HEAD_DIM:
            raise UnsupportedModelError(f"head_dim {head_dim} exceeds the GPU attention limit {ATT_MAX_HEAD_DIM}")
        return GpuKVCache(self, n_layers, n_slots, n_ctx, n_kv_heads, head_dim)

    # ---- ops
    def embedding(self, table: GpuLinear, tokens: np.ndarray) -> DeviceArray:
        part = table.parts[0]
        ids = self.upload_cached("tokens", np.asarray(tokens).reshape(-1))
        out = self.empty((len(ids), table.n_in))
        block = self.threads(min((table.n_in + 31) // 32, 128))
        if part.split:
            self.launch(f"get_rows_split_{part.kernel}", (len(ids),), block, part.block.ptr, part.n_out,
                        table.n_in, ids.ptr, out.ptr, 1.0)
        else:
            self.launch(f"get_rows_{part.kernel}", (len(ids),), block, part.block.ptr, part.row_bytes, ids.ptr,
                        out.ptr, table.n_in, 1.0)
        return out

    def matmul(self, x: DeviceArray, lin: GpuLinear):
        rows = x.size // lin.n_in
        y = self.empty((rows, lin.n_out))
        self.matmul_into(x, lin, y)
        if lin.logits and self._graph is not None:
            # Inside a graph step the logits stay on the device (downloaded after the replay); the
            # model code gets a placeholder of the right shape.
            self._graph.logits = y
            return np.zeros(y.shape, dtype=np.float32)
        return self.to_host(y) if lin.logits else y

    def matmul_into(self, x: DeviceArray, lin: GpuLinear, y: DeviceArray) -> None:
        rows = x.size // lin.n_in
        block = self.threads(min(4 * self.warp, self.max_threads))
        per_block = max(1, block // self.warp)
        q8 = x.q8
        for p in lin.parts:
            bias = lin.bias.ptr + 4 * p.col_off if lin.bias is not None else 0
            if p.split:
                q8 = q8 or mvq.quantize(self, x.reshape(rows, lin.n_in))
                mvq.launch(self, p, q8, rows, y.ptr + 4 * p.col_off, lin.n_out, bias)
                continue
            grid = ((p.n_out + per_block - 1) // per_block, (rows + MV_ROWS_PER_PASS - 1) // MV_ROWS_PER_PASS)
            self.launch(f"mv_{p.kernel}", grid, block, p.block.ptr, p.row_bytes, x.ptr, lin.n_in,
                        y.ptr + 4 * p.col_off, lin.n_out, bias, p.n_in, p.n_out, rows)

    def rms_norm(self, x: DeviceArray, weight: DeviceArray, eps: float) -> DeviceArray:
        n = x.shape[-1]
        y = self.empty(x.shape)
        if self.q8_activations and x.ndim == 2 and n % mvq.Q8_BLOCK == 0:
            # The projection after a norm reads 8-bit activations: quantize them in the same kernel.
            xq, xd = self.empty(x.shape, np.int8), self.empty((x.shape[0], n // mvq.Q8_BLOCK, 2))
            self.launch("rms_norm_q8", (x.shape[0],), self.threads(min(max(n // mvq.Q8_BLOCK, 32), 256)),
                        x.ptr, y.ptr, weight.ptr, n, eps, xq.ptr, xd.ptr)
            y.q8 = (xq, xd)
            return y
        self.launch("rms_norm_f32", (x.size // n,), self.threads(min(n, 256)), x.ptr, y.ptr, weight.ptr, n, eps)
        return y

    def _elementwise(self, kernel: str, n: int, *args) -> None:
        block = self.threads(256)
        grid = max(1, min((n + block - 1) // block, self.grid_cap))
        self.launch(kernel, (grid,), block, *args)

    def add(self, a: DeviceArray, b: DeviceArray) -> DeviceArray:
        y = self.empty(a.shape)
        self._elementwise("add_f32", a.size, a.ptr, b.ptr, y.ptr, a.size)
        return y

    def scale(self, x: DeviceArray, s: float) -> DeviceArray:
        y = self.empty(x.shape)
        self._elementwise("scale_f32", x.size, x.ptr, y.ptr, x.size, float(s))
        return y

    def softcap(self, x, cap: float):
        if isinstance(x, np.ndarray):  # logits are already on the host: same formula as the CPU
            return np.tanh(x / np.float32(cap)) * np.float32(cap)
        y = self.empty(x.shape)
        self._elementwise("softcap_f32", x.size, x.ptr, y.ptr, x.size, float(cap))
        return y

    def _gated(self, kernel: str, gate_up: DeviceArray) -> DeviceArray:
        f = gate_up.shape[-1] // 2
        rows = gate_up.size // (2 * f)
        y = self.empty(gate_up.shape[:-1] + (f,))
        self._elementwise(kernel, rows * f, gate_up.ptr, y.ptr, rows, f)
        return y

    def swiglu(self, gate_up: DeviceArray) -> DeviceArray:
        return self._gated("swiglu_f32", gate_up)

    def geglu(self, gate_up: DeviceArray) -> DeviceArray:
        return self._gated("geglu_f32", gate_up)

    def columns(self, x: DeviceArray, lo: int, hi: int) -> DeviceArray:
        """x[:, lo:hi] as a new contiguous array."""
        rows, cols = x.shape[0], hi - lo
        y = self.empty((rows, cols))
        if rows and cols:
            self.launch("copy2d_f32", (rows,), self.threads(min(cols, 256)), x.ptr + 4 * lo, x.shape[1],
                        y.ptr, cols, cols)
        return y

    def take_rows(self, x: DeviceArray, idx: np.ndarray) -> DeviceArray:
        """x[idx] along the first axis: a view for a consecutive run, else a gather."""
        idx = np.where(idx < 0, idx + x.shape[0], idx)
        if len(idx) and np.all(np.diff(idx) == 1):
            return x.row_view(int(idx[0]), int(idx[-1]) + 1)
        cols = x.size // max(1, x.shape[0])
        y = self.empty((len(idx),) + x.shape[1:])
        ids = self.upload(idx.astype(np.int32))
        self.launch("gather_rows_f32", (len(idx),), self.threads(min(cols, 256)), x.ptr, ids.ptr, y.ptr, cols)
        return y

    def _rope_table(self, spec: RopeSpec, max_pos: int) -> tuple[DeviceArray, DeviceArray]:
        """cos/sin for positions 0..n-1, computed in float64 exactly as the CPU op, rounded once."""
        have = self._rope_tables.get(spec)
        if have is None or have[0] <= max_pos:
            n = max(1024, 1 << int(max_pos).bit_length())
            angles = np.outer(np.arange(n, dtype=np.float64) * spec.pos_scale, spec.inv_freq())
            have = (n, self.upload(np.cos(angles).astype(np.float32)), self.upload(np.sin(angles).astype(np.float32)))
            self._rope_tables[spec] = have
        return have[1], have[2]

    def rope(self, x: DeviceArray, positions: np.ndarray, spec: RopeSpec) -> DeviceArray:
        positions = np.asarray(positions).reshape(-1)
        t, heads, hd = x.shape
        cos_t, sin_t = self._rope_table(spec, int(positions.max(initial=0)))
        pos = self.upload_cached("positions", positions)
        y = self.empty(x.shape)
        self.launch("rope_f32", (t * heads,), self.threads(min(hd, 256)), x.ptr, y.ptr, cos_t.ptr, sin_t.ptr,
                    pos.ptr, heads, hd, spec.dim, int(spec.neox))
        return y

    def attention(self, q: DeviceArray, k: DeviceArray, v: DeviceArray, cache: GpuKVCache, layer: int,
                  slots: Sequence[int], starts: Sequence[int], counts: Sequence[int],
                  scale: float, window: int | None) -> DeviceArray:
        n, heads, hd = q.shape
        kv_heads = k.shape[1]
        slot_d, pos_d = self._row_index(slots, starts, counts)
        kc, vc = cache.k[layer], cache.v[layer]
        block = self.threads(min(hd, 256))
        self.launch("kv_append_f32", (n * kv_heads,), block, k.ptr, v.ptr, kc, vc, slot_d.ptr, pos_d.ptr,
                    kv_heads, hd, cache.n_ctx)
        out = self.empty((n, heads * hd))
        att_block = self.threads(4 * self.warp)
        self.launch("attn_f32", (heads, n), att_block, q.ptr, kc, vc, out.ptr, slot_d.ptr, pos_d.ptr,
                    heads, kv_heads, hd, cache.n_ctx, float(scale), int(window or 0))
        return out

    def _row_index(self, slots, starts, counts) -> tuple[DeviceArray, DeviceArray]:
        """Device arrays of each row's cache slot and position; every layer of a step shares them."""
        if self._graph is not None:  # decode: one row per sequence, at its own position
            return self._graph.slots, self._graph.positions
        key = (tuple(map(int, slots)), tuple(map(int, starts)), tuple(map(int, counts)))
        if self._row_key != key:
            row_slot = np.repeat(np.asarray(key[0], dtype=np.int64), key[2])
            row_pos = np.concatenate([np.arange(s, s + c) for s, c in zip(key[1], key[2])])
            self._row_arrays = (self.upload(row_slot, np.int32), self.upload(row_pos, np.int32))
            self._row_key = key
        return self._row_arrays

    # ---- decode graphs
    def decode_step(self, model: Any, tokens: np.ndarray, cache: GpuKVCache, slots: np.ndarray,
                    positions: np.ndarray) -> np.ndarray:
        """One checked decode step (called by Decoder.decode): a graph replay, or op by op."""
        if not self.use_graphs or self._graph is not None or not isinstance(cache, GpuKVCache):
            return model.forward_decode(tokens, cache, slots, positions)
        key = (id(model), len(tokens))
        if key not in cache.graphs:
            return self._capture_decode(model, key, tokens, cache, slots, positions)
        g = cache.graphs[key]
        if g is None:
            return model.forward_decode(tokens, cache, slots, positions)
        host = g.upload_inputs(tokens, slots, positions)
        self.rt.graph_launch(g.exe, self.stream)
        out = g.download_logits()  # synchronises: `host` was read by then
        del host
        return out

    def _capture_decode(self, model, key, tokens, cache, slots, positions) -> np.ndarray:
        """Run this step op by op through a new graph's pool and inputs (allocating everything the
        step needs, and giving this step's logits), then capture the same sequence for replays.
        Capturing runs nothing, so the cache holds exactly what this step wrote."""
        g = DecodeGraph(self, model, len(tokens))
        try:
            # Tables for every position the cache can hold, so no capture ever needs a larger one.
            for spec in set(model.args.ropes):
                self._rope_table(spec, cache.n_ctx)
            g.keep = [t for t in self._rope_tables.values()]
            host = g.upload_inputs(tokens, slots, positions)
            with self._graph_step(g):
                model.forward_decode(tokens, cache, slots, positions)
            out = g.download_logits()
            del host
        except Exception:
            g.close()
            raise
        g.logits = None  # its block goes back to the pool, for the captured step to take
        try:
            with self._graph_step(g):
                g.capturing = True
                self.rt.capture_begin(self.stream)
                try:
                    model.forward_decode(tokens, cache, slots, positions)
                finally:
                    g.capturing = False
                    g.exe = self.rt.capture_end(self.stream)  # always leave capture mode
            cache.graphs[key] = g
        except Exception as exc:  # a runtime that cannot capture this: keep the op-by-op path
            self.graph_failures.append(f"{type(exc).__name__}: {exc}")
            g.close()
            cache.graphs[key] = None
        return out

    class _GraphStep:
        def __init__(self, ops: "GpuOps", g: DecodeGraph):
            self.ops, self.g = ops, g

        def __enter__(self):
            self.saved = self.ops.pool
            self.ops.pool, self.ops._graph = self.g.pool, self.g

        def __exit__(self, *exc):
            self.ops.pool, self.ops._graph = self.saved, None
            return False

    def _graph_step(self, g: DecodeGraph) -> "_GraphStep":
        """Ops inside take memory from the graph's pool and read its input buffers."""
        return GpuOps._GraphStep(self, g)

    # ---- sampling helpers (device-side)
    def softmax(self, x: DeviceArray) -> DeviceArray:
        n = x.shape[-1]
        y = self.empty(x.shape)
        self.launch("softmax_f32", (x.size // n,), self.threads(min(n, 256)), x.ptr, y.ptr, n)
        return y

    def argmax(self, x: DeviceArray) -> np.ndarray:
        n = x.shape[-1]
        rows = x.size // n
        out = self.empty((rows,), np.int32)
        self.launch("argmax_f32", (rows,), self.threads(min(n, 256)), x.ptr, out.ptr, n)
        return self.to_host(out)


def make_ops(name: str = "cuda") -> GpuOps:
    """Entry point (see rocmforge_core.models.make_ops): the ops of runtime `name` ("hip" or "cuda")."""
    from rocmforge_core.gpu import open_runtime

    return GpuOps(open_runtime(name), name)
