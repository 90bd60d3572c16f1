"""The GPU backend: the same ops as backends/cpu.py, run by hip_kernels/ on a GpuRuntime (hip or cuda).

Weights stay packed GGUF blocks on the device (gpu/weights.py), norm vectors float32, the KV cache
lives on the device (gpu/cache.py), and activations are DeviceArrays from a stream-ordered pool
(gpu/memory.py). Only token ids go in and logits come out: the vocabulary projection returns a host
numpy array, every other op stays on the device. Kernels are found by name in hip_kernels/
(gpu/kernels.py); an op is a Python method that picks a launch shape and passes pointers and sizes.

Column slices of an activation (`qkv[:, a:b]`) are strided views (DeviceArray.ld): the ops that
consume q, k and v (matmul, rms_norm, rope, kv append) take the row stride, the others copy a view
to contiguous rows first (`contiguous`).

Per-step indices (token ids, positions, cache slots) come either as host arrays (uploaded here, once
per distinct content) or as device int32 arrays, which the decode step (gpu/decode_step.py) passes
so that a captured graph reads them from fixed buffers.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Any, Sequence

import numpy as np

from rocmforge_core.errors import UnsupportedModelError
from rocmforge_core.gpu import decode_step, mmf, mvq, prefill_step
from rocmforge_core.gpu.cache import GpuKVCache
from rocmforge_core.gpu.kernels import KernelLoader
from rocmforge_core.gpu.memory import BufferPool, DeviceArray
from rocmforge_core.gpu.runtime import GpuError, GpuRuntime, PackedArgs
from rocmforge_core.gpu.staging import Stager
from rocmforge_core.gpu.weights import GpuLinear, load_linear
from rocmforge_core.rope import RopeSpec, cos_sin, table_size

MV_ROWS_PER_PASS = 4  # RF_MV_MAXB in the prelude
ATT_MAX_HEAD_DIM = 256  # RF_ATT_MAX_HD in attention.hip
ATT_MAX_SPLITS = 32  # RF_ATT_MAX_SPLITS in attention.hip (attn_combine_f32)
FA_MAX_HD, FA_ROWS, FA_WARPS = 128, 32, 2  # RF_FA_MAX_HD, RF_FA_ROWS, RF_FA_WARPS in fattn.hip
GQA_HEADS, GQA_HEAD_DIMS = 4, (64, 128, 256)  # RF_GQA_G and the attn_gqa_f16_<hd> instances in attention.hip
FA_MIN_ROWS = 16  # shorter prompt chunks keep the row-per-block kernel
SAMPLE_MAX_K = 256  # RF_SAMPLE_MAX_K in sample.hip: the largest top_k the device sampler takes
SAMPLE_SLICE = 2048  # ids per block of sample_slices_f32 (>= SAMPLE_MAX_K); rows up to twice this take one block
_F32 = np.dtype(np.float32)


class GpuOps:
    """The backend ops object (see backends/cpu.py for the contract of each method)."""

    def __init__(self, rt: GpuRuntime, name: str | None = None):
        self.rt = rt
        self.name = name or rt.name
        self.stream = rt.stream_create()
        self.pool = BufferPool(rt, self.stream)
        self.kernels = KernelLoader(rt)
        self._rope_tables: dict[RopeSpec, tuple[int, DeviceArray, DeviceArray]] = {}
        self._uploads: dict[str, tuple[bytes, DeviceArray]] = {}
        self._in_flight: list[np.ndarray] = []
        self._row_key: tuple | None = None
        self._row_arrays: tuple[DeviceArray, DeviceArray] | None = None
        # Decode through captured graphs (gpu/decode_step.py); ROCMFORGE_GPU_GRAPHS=0 turns it off.
        self.use_graphs = os.environ.get("ROCMFORGE_GPU_GRAPHS", "1") != "0"
        # Prompt chunks of these lengths replay a captured graph too (gpu/prefill_step.py): the
        # engine's full chunks; ROCMFORGE_GPU_PREFILL_GRAPHS=0 runs every chunk op by op.
        self.prefill_graph_rows = (512,) if os.environ.get("ROCMFORGE_GPU_PREFILL_GRAPHS", "1") != "0" else ()
        self._one_sequence = False
        self.graph_failures: list[str] = []  # why a capture fell back to op-by-op (for diagnostics)
        self.launches = 0
        self.attn_keys_per_split = 512  # see _attention_splits
        # Decode attention over an f16 cache per KV head (attn_gqa); ROCMFORGE_GPU_GQA=0 keeps one block
        # per query head (attn_<type>, attn_split_<type>).
        self.gqa_attention = os.environ.get("ROCMFORGE_GPU_GQA", "1") != "0"
        self.gqa_min_keys = int(os.environ.get("ROCMFORGE_GPU_GQA_MIN_KEYS", "128"))  # see _gqa_splits
        self.gqa_blocks_per_sm = int(os.environ.get("ROCMFORGE_GPU_GQA_BLOCKS", "2"))
        # ... of which a row uses only as many as give each at least this many of its current keys (0: all
        # of them; see rf_live_splits in attention.hip). Measured on an H200 (BENCHMARKS.md): 64 keys made
        # the 8B step at depth 64 2.5 % slower (fewer blocks for a latency-bound pass), 16 is neutral to
        # 1.3 % faster (8B, depth 64 of a 4160-key cache).
        self.gqa_split_keys = int(os.environ.get("ROCMFORGE_GPU_GQA_SPLIT_KEYS", "16"))
        # Rope and the KV append inside the decode attention (_fused_rope_decode): off unless
        # ROCMFORGE_GPU_ROPE_FUSE=1. Measured on an H200: 3-5 % faster steps at depth 16,384, 2-4 % slower
        # at depth 64 (its loads sit on the latency-bound short pass; the launch it saves costs less).
        self.rope_in_attention = os.environ.get("ROCMFORGE_GPU_ROPE_FUSE", "0") == "1"
        self.kv_cache_type = "f16"  # new caches store keys and values in f16 (or "f32")
        # Projections read 8-bit activations (gpu/mvq.py) for the weight types that have the int8
        # mat-vec; ROCMFORGE_GPU_Q8=0 keeps every product in float32 (the CPU's arithmetic, to 1e-5).
        self.q8_activations = os.environ.get("ROCMFORGE_GPU_Q8", "1") != "0"
        # Projections of many rows (prompts) run on the matrix units (gpu/mmf.py); ROCMFORGE_GPU_MMA=0
        # keeps them on the mat-vec.
        self.matrix_tiles = os.environ.get("ROCMFORGE_GPU_MMA", "1") != "0"
        # Each split weight shape's mat-vec variant is picked by timing when a model's weights are up
        # (mvq.tune, weights_loaded; the choices kept on disk for the next load, mvq.TuningCache);
        # ROCMFORGE_GPU_MVQ_TUNE=0 keeps the defaults.
        self.tune_matvec = os.environ.get("ROCMFORGE_GPU_MVQ_TUNE", "1") != "0" and rt.times_kernels
        self.matvec_tuning: list[str] = []  # what tuning chose, one line per shape
        self._untuned: list[GpuLinear] = []
        self._stager: Stager | None = None  # weight uploads through pinned buffers while a model loads
        self._raw_scratch: tuple[int, int] | None = None  # (device address, bytes): raw blocks before their split
        # A norm before a projection can run inside the mat-vec's blocks for one row of at most this many
        # values (norm_matmul, and the gated activation before the down projection); off by default:
        # measured slower than the two launches on an H200 (SmolLM2 step 1.029 vs 0.762 ms, BENCHMARKS.md).
        self.norm_fuse_max = int(os.environ.get("ROCMFORGE_GPU_NORM_FUSE", "0"))
        self._logits_into: DeviceArray | None = None  # set by step_scope
        self._capturing = False
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
        return self.kernels.get(name)

    def launch(self, name: str, grid, block: int, *args) -> None:
        self.launches += 1  # lets a queued-ahead decode step see that something else ran since
        fn, packed = self.kernels.get(name)
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
        if self._capturing:
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
        host = np.ascontiguousarray(host, dtype=np.int32)
        raw = host.tobytes()
        hit = self._uploads.get(key)
        if hit is not None and hit[0] == raw:
            return hit[1]
        arr = self.upload(host)
        self._uploads[key] = (raw, arr)
        return arr

    def _indices(self, key: str, values) -> DeviceArray:
        """Per-step int32 indices on the device: as given, or uploaded from the host."""
        if isinstance(values, DeviceArray):
            return values
        return self.upload_cached(key, np.asarray(values).reshape(-1))

    def to_host(self, x) -> np.ndarray:
        if isinstance(x, np.ndarray):
            return x
        x = self.contiguous(x)
        out = np.empty(x.shape, dtype=x.dtype)
        if out.nbytes:
            self.rt.copy_dtoh(out, x.ptr, out.nbytes, self.stream)
        self.sync()
        return out

    def sync(self) -> None:
        self.rt.stream_synchronize(self.stream)
        self._in_flight.clear()

    @contextlib.contextmanager
    def step_scope(self, pool: BufferPool, logits: DeviceArray, capturing: bool):
        """Ops inside draw memory from `pool` and write the vocabulary projection into `logits`
        (returning a host placeholder); with `capturing`, host uploads are refused."""
        saved = self.pool
        self.pool, self._logits_into, self._capturing = pool, logits, capturing
        try:
            yield
        finally:
            self.pool, self._logits_into, self._capturing = saved, None, False

    def close(self) -> None:
        self._end_staging()
        self._uploads.clear()
        self._untuned.clear()
        self._row_key = self._row_arrays = None
        self._rope_tables.clear()
        self.pool.close()

    # ---- weights
    def linear(self, gguf_file, names: Sequence[str], bias_names: Sequence[str] | None = None) -> GpuLinear:
        lin = load_linear(self, gguf_file, names, bias_names)
        if any(p.split for p in lin.parts):
            self._untuned.append(lin)
        return lin

    def stage(self, dst: int, raw: np.ndarray) -> None:
        """Copy a weight's bytes to device address dst through the pinned double buffer
        (gpu/staging.py): asynchronous, the host already reading the next chunk of the file."""
        if self._capturing:
            raise GpuError("host upload inside a decode graph capture")
        if self._stager is None:
            self._stager = Stager(self.rt, self.stream)
        self._stager.copy(dst, raw)

    def raw_scratch(self, nbytes: int) -> int:
        """A device buffer of at least nbytes for a weight's raw blocks on their way to its split layout
        (mvq.split_on_device), kept from one weight to the next while a model loads: the copies and the
        split kernels queue on the one stream, which orders each reuse after the last reader, with no
        allocation, free or host wait per weight."""
        if self._raw_scratch is None or self._raw_scratch[1] < nbytes:
            if self._raw_scratch is not None:
                self.rt.stream_synchronize(self.stream)
                self.rt.free(self._raw_scratch[0])
                self._raw_scratch = None
            self._raw_scratch = (self.rt.alloc(nbytes), nbytes)
        return self._raw_scratch[0]

    def _end_staging(self) -> None:
        """The pinned buffers and the raw scratch go back (after the copies that read them)."""
        if self._stager is not None:
            self._stager.close()
            self._stager = None
        if self._raw_scratch is not None:
            self.rt.stream_synchronize(self.stream)
            self.rt.free(self._raw_scratch[0])
            self._raw_scratch = None

    def weights_loaded(self) -> None:
        """A model's weights are all up: the staging buffers go back, then the mat-vec variants are
        timed on the weights (see tune_matvec)."""
        self._end_staging()
        untuned, self._untuned = self._untuned, []
        if self.tune_matvec and untuned:
            self.matvec_tuning += mvq.tune(self, untuned, cache=True)

    def vector(self, gguf_file, name: str) -> DeviceArray:
        return self.upload(gguf_file.dequant(name).reshape(-1), np.float32)

    def make_cache(self, n_layers: int, n_slots: int, n_ctx: int, n_kv_heads: int, head_dim: int) -> GpuKVCache:
        if head_dim > ATT_MAX_HEAD_DIM:
            raise UnsupportedModelError(f"head_dim {head_dim} exceeds the GPU attention limit {ATT_MAX_HEAD_DIM}")
        return GpuKVCache(self, n_layers, n_slots, n_ctx, n_kv_heads, head_dim, self.kv_cache_type)

    # ---- the decode step
    samples_on_device = True  # decode_step(..., sample=table) draws the tokens here (sample.hip)

    def prefill_step(self, model: Any, tokens: np.ndarray, cache: GpuKVCache, slot: int, start: int):
        """Decoder.prefill's hook: a chunk of one of the prefill_graph_rows lengths through its captured
        graph (gpu/prefill_step.py); None: run it op by op."""
        if not self.use_graphs or not self.prefill_graph_rows or not isinstance(cache, GpuKVCache):
            return None
        return prefill_step.run(self, model, tokens, cache, slot, start)

    @contextlib.contextmanager
    def one_sequence(self):
        """Ops inside get their rows' slots and positions as device arrays (a captured prompt chunk)
        that all belong to one sequence, so the prompt attention may take the flash-attention tiles."""
        saved, self._one_sequence = self._one_sequence, True
        try:
            yield
        finally:
            self._one_sequence = saved

    def decode_step(self, model: Any, tokens: np.ndarray, cache: GpuKVCache, slots: np.ndarray,
                    positions: np.ndarray, greedy: bool = False, sample: np.ndarray | None = None,
                    penalties: tuple[np.ndarray, np.ndarray] | None = None,
                    next_sample: np.ndarray | None = None, next_penalties=None) -> np.ndarray:
        """Decoder.decode's hook: the step through a captured graph, or op by op. With `greedy`, the
        rows' argmax token ids (picked on the device); with a `sample` table (rows of temperature,
        top_k, top_p, min_p, u), the rows' tokens drawn on the device, after the `penalties` (see
        penalize) if given; else the logits. `next_sample` (and `next_penalties`): the next step's
        table (and windows), for a step queued ahead (decode_step.py)."""
        if not self.use_graphs or not isinstance(cache, GpuKVCache):
            logits = model.forward_decode(tokens, cache, slots, positions)
            if sample is not None:
                return self.sample_rows(self.upload(np.ascontiguousarray(logits, np.float32)), sample, penalties)
            return np.argmax(logits, axis=-1).astype(np.int64) if greedy else logits
        return decode_step.run(self, model, tokens, cache, slots, positions, greedy, sample, penalties, next_sample,
                               next_penalties)

    # ---- ops
    def embedding(self, table: GpuLinear, tokens) -> DeviceArray:
        part = table.parts[0]
        ids = self._indices("tokens", tokens)
        out = self.empty((len(ids), table.n_in))
        block = self.threads(min((table.n_in + 31) // 32, 128))
        if part.split:  # the table is also the (tied) output projection, split for the int8 mat-vec
            self.launch(f"get_rows_split_{part.kernel}", (len(ids),), block, part.block.ptr, part.n_out,
                        table.n_in, ids.ptr, out.ptr, 1.0)
        else:
            self.launch(f"get_rows_{part.kernel}", (len(ids),), block, part.block.ptr, part.row_bytes, ids.ptr,
                        out.ptr, table.n_in, 1.0)
        return out

    def norm_matmul(self, x: DeviceArray, weight: DeviceArray, eps: float, lin: GpuLinear):
        """matmul(rms_norm(x, weight, eps), lin). One short activation row whose projection is all int8
        mat-vec parts (a small model's decode): the norm runs in each mat-vec block's prologue
        (mvq_norm_<type>), no launch of its own (rows up to norm_fuse_max values)."""
        if not (self.q8_activations and x.ndim == 2 and x.shape[0] == 1 and x.contiguous and x.dtype == _F32
                and lin.n_in <= min(self.norm_fuse_max, mvq.NORM_MAX) and lin.n_in % mvq.Q8_BLOCK == 0
                and all(p.split for p in lin.parts)):
            return self.matmul(self.rms_norm(x, weight, eps), lin)
        into = lin.logits and self._logits_into is not None
        y = self._logits_into if into else self.empty((1, lin.n_out))
        if y.shape != (1, lin.n_out):
            raise GpuError(f"the step's logits buffer is {y.shape}, the projection gives {(1, lin.n_out)}")
        for p in lin.parts:
            bias = lin.bias.ptr + 4 * p.col_off if lin.bias is not None else 0
            mvq.launch_norm(self, p, x, weight, eps, y.ptr + 4 * p.col_off, lin.n_out, bias)
        if into:
            return np.zeros(y.shape, dtype=np.float32)
        return self.to_host(y) if lin.logits else y

    def glu_matmul(self, gate_up: DeviceArray, activation: str, lin: GpuLinear,
                   residual: DeviceArray | None = None):
        """matmul(swiglu(gate_up) or geglu(...), lin, residual). One short row whose projection is all
        int8 mat-vec parts: the activation runs in each mat-vec block's prologue (mvq_<act>_<type>), no
        launch of its own (rows up to norm_fuse_max * 2 values)."""
        act = "swiglu" if activation == "silu" else "geglu"
        n = lin.n_in
        if not (self.q8_activations and gate_up.ndim == 2 and gate_up.shape == (1, 2 * n) and gate_up.contiguous
                and n <= min(2 * self.norm_fuse_max, mvq.NORM_MAX) and n % mvq.Q8_BLOCK == 0
                and all(p.split for p in lin.parts) and (residual is None or residual.contiguous)):
            return self.matmul(getattr(self, act)(gate_up), lin, residual=residual)
        y = self.empty((1, lin.n_out))
        for p in lin.parts:
            bias = lin.bias.ptr + 4 * p.col_off if lin.bias is not None else 0
            res = residual.ptr + 4 * p.col_off if residual is not None else 0
            mvq.launch_glu(self, p, gate_up, act, y.ptr + 4 * p.col_off, lin.n_out, bias, res)
        return y

    def matmul(self, x: DeviceArray, lin: GpuLinear, residual: DeviceArray | None = None):
        """x @ W.T (+ bias) (+ residual, added in the int8 mat-vec's epilogue where it runs)."""
        rows = x.size // lin.n_in
        if residual is not None:
            y = self.empty((rows, lin.n_out))
            if all(p.split for p in lin.parts):
                self.matmul_into(x, lin, y, self.contiguous(residual))
                return y
            self.matmul_into(x, lin, y)
            return self.add(residual, y)
        if lin.logits and self._logits_into is not None:
            # A decode step keeps its logits on the device (it downloads them after the replay); the
            # model code gets a placeholder of the right shape.
            y = self._logits_into
            if y.shape != (rows, lin.n_out):
                raise GpuError(f"the step's logits buffer is {y.shape}, the projection gives {(rows, lin.n_out)}")
            self.matmul_into(x, lin, y)
            return np.zeros(y.shape, dtype=np.float32)
        y = self.empty((rows, lin.n_out))
        self.matmul_into(x, lin, y)
        return self.to_host(y) if lin.logits else y

    def matmul_into(self, x: DeviceArray, lin: GpuLinear, y: DeviceArray, residual: DeviceArray | None = None) -> None:
        """y = x @ W.T (+ bias); `residual` (rows, n_out), only when every part is split, is added too."""
        rows = x.size // lin.n_in
        if not x.contiguous and x.row_size != lin.n_in:
            x = self.contiguous(x)
        ldx = lin.n_in if x.contiguous else x.ld  # the mat-vec reads activation rows ldx apart
        block = self.threads(min(4 * self.warp, self.max_threads))
        per_block = max(1, block // self.warp)
        q8 = x.q8
        parts = lin.parts
        # Prompt rows: the split parts (and, unless every product is to stay float32, the GGUF-layout
        # types with a tile stage) as matrix-unit tiles, fused parts of one type in one launch.
        tiles = [p for p in parts if p.split or (self.q8_activations and mmf.tiled(p))] \
            if self.matrix_tiles and mmf.usable(x, ldx, rows) else []
        if tiles:
            x16 = mmf.to_f16(self, x, ldx, rows, lin.n_in)
            for group in mmf.groups(tiles):
                mmf.launch(self, group, x16, rows, y.ptr, lin.n_out, lin.bias.ptr if lin.bias is not None else 0,
                           residual.ptr if residual is not None else 0)
            parts = [p for p in parts if not any(p is t for t in tiles)]
        for p in parts:
            bias = lin.bias.ptr + 4 * p.col_off if lin.bias is not None else 0
            if p.split:
                res = residual.ptr + 4 * p.col_off if residual is not None else 0
                q8 = q8 or mvq.quantize(self, x, ldx)
                mvq.launch(self, p, q8, rows, y.ptr + 4 * p.col_off, lin.n_out, bias, res)
                continue
            grid = ((p.n_out + per_block - 1) // per_block, (rows + MV_ROWS_PER_PASS - 1) // MV_ROWS_PER_PASS)
            self.launch(f"mv_{p.kernel}", grid, block, p.block.ptr, p.row_bytes, x.ptr, ldx,
                        y.ptr + 4 * p.col_off, lin.n_out, bias, p.n_in, p.n_out, rows)

    def rms_norm(self, x: DeviceArray, weight: DeviceArray, eps: float) -> DeviceArray:
        n = x.shape[-1]
        # Rows of n, grouped `heads` to a token row of the (possibly strided) first axis.
        heads, ldx = (1, n) if x.contiguous else (x.row_size // n, x.ld)
        y = self.empty(x.shape)
        if self.q8_activations and x.ndim == 2 and x.contiguous and n % mvq.Q8_BLOCK == 0:
            # The projection after a norm reads 8-bit activations: quantize them in the same kernel.
            xq, xd = mvq.empty_q8(self, x.shape[0], n)
            per_thread = 1 if self.warp >= mvq.Q8_BLOCK else mvq.Q8_BLOCK  # as in mvq.q8_launch
            self.launch("rms_norm_q8", (x.shape[0],), self.threads(min(n // per_thread, 1024)),
                        x.ptr, y.ptr, weight.ptr, n, eps, xq.ptr, xd.ptr)
            y.q8 = (xq, xd)
            return y
        self.launch("rms_norm_f32", (x.size // n,), self.threads(min(n, 256)), x.ptr, ldx, heads, y.ptr,
                    weight.ptr, n, eps)
        return y

    def _elementwise(self, kernel: str, n: int, *args) -> None:
        block = self.threads(256)
        grid = max(1, min((n + block - 1) // block, self.grid_cap))
        self.launch(kernel, (grid,), block, *args)

    def add(self, a: DeviceArray, b: DeviceArray) -> DeviceArray:
        a, b = self.contiguous(a), self.contiguous(b)
        y = self.empty(a.shape)
        self._elementwise("add_f32", a.size, a.ptr, b.ptr, y.ptr, a.size)
        return y

    def scale(self, x: DeviceArray, s: float) -> DeviceArray:
        x = self.contiguous(x)
        y = self.empty(x.shape)
        self._elementwise("scale_f32", x.size, x.ptr, y.ptr, x.size, float(s))
        return y

    def softcap(self, x, cap: float):
        if isinstance(x, np.ndarray):  # logits are already on the host: same formula as the CPU
            return np.tanh(x / np.float32(cap)) * np.float32(cap)
        x = self.contiguous(x)
        y = self.empty(x.shape)
        self._elementwise("softcap_f32", x.size, x.ptr, y.ptr, x.size, float(cap))
        return y

    def _gated(self, kernel: str, gate_up: DeviceArray) -> DeviceArray:
        gate_up = self.contiguous(gate_up)
        f = gate_up.shape[-1] // 2
        rows = gate_up.size // (2 * f)
        y = self.empty(gate_up.shape[:-1] + (f,))
        if self.q8_activations and f % mvq.Q8_BLOCK == 0:
            # The down projection reads 8-bit activations: quantize them in the same kernel.
            y.q8 = mvq.empty_q8(self, rows, f)
            grid, block = mvq.q8_launch(self, f, rows)
            self.launch(kernel.replace("_f32", "_q8"), grid, block, gate_up.ptr, y.ptr, f, y.q8[0].ptr, y.q8[1].ptr)
            return y
        self._elementwise(kernel, rows * f, gate_up.ptr, y.ptr, rows, f)
        return y

    def swiglu(self, gate_up: DeviceArray) -> DeviceArray:
        return self._gated("swiglu_f32", gate_up)

    def geglu(self, gate_up: DeviceArray) -> DeviceArray:
        return self._gated("geglu_f32", gate_up)

    def contiguous(self, x: DeviceArray) -> DeviceArray:
        """x itself, or for a strided view (a column slice) a contiguous copy: for the ops whose
        kernels read contiguous rows only."""
        if x.contiguous:
            return x
        rows, cols = x.shape[0], x.row_size
        y = self.empty(x.shape, x.dtype)
        if rows and cols:
            if x.dtype != _F32:
                raise GpuError(f"no strided copy for {x.dtype.name} arrays")
            self.launch("copy2d_f32", (rows,), self.threads(min(cols, 256)), x.ptr, x.ld, y.ptr, cols, cols)
        return y

    def take_rows(self, x: DeviceArray, idx: np.ndarray) -> DeviceArray:
        """x[idx] along the first axis: a view for a consecutive run, else a gather."""
        idx = np.where(idx < 0, idx + x.shape[0], idx)
        if len(idx) and np.all(np.diff(idx) == 1):
            return x.row_view(int(idx[0]), int(idx[-1]) + 1)
        x = self.contiguous(x)
        cols = x.size // max(1, x.shape[0])
        y = self.empty((len(idx),) + x.shape[1:])
        ids = self.upload(idx.astype(np.int32))
        self.launch("gather_rows_f32", (len(idx),), self.threads(min(cols, 256)), x.ptr, ids.ptr, y.ptr, cols)
        return y

    def _rope_table(self, spec: RopeSpec, max_pos: int) -> tuple[DeviceArray, DeviceArray]:
        """cos/sin for positions 0..n-1, computed in float64 exactly as the CPU op, rounded once."""
        have = self._rope_tables.get(spec)
        if have is None or have[0] <= max_pos:
            n = table_size(max_pos)
            cos, sin = cos_sin(spec, n)
            have = (n, self.upload(cos), self.upload(sin))
            self._rope_tables[spec] = have
        return have[1], have[2]

    def reserve_rope(self, specs, max_pos: int) -> list[tuple[DeviceArray, DeviceArray]]:
        """Tables covering max_pos for every spec, so rope can take positions that live on the
        device; the caller keeps the returned tables alive while it may use them."""
        return [self._rope_table(spec, max_pos) for spec in specs]

    def _rope_inputs(self, positions, spec: RopeSpec) -> tuple[DeviceArray, DeviceArray, DeviceArray]:
        """cos and sin tables covering the positions, and the positions on the device."""
        if isinstance(positions, DeviceArray):  # bounded by the caller's reserve_rope
            if spec not in self._rope_tables:
                raise GpuError("rope on device positions needs reserve_rope for its spec first")
            cos_t, sin_t = self._rope_tables[spec][1:]
        else:
            positions = np.asarray(positions).reshape(-1)
            cos_t, sin_t = self._rope_table(spec, int(positions.max(initial=0)))
        return cos_t, sin_t, self._indices("positions", positions)

    def rope(self, x: DeviceArray, positions, spec: RopeSpec) -> DeviceArray:
        t, heads, hd = x.shape
        cos_t, sin_t, pos = self._rope_inputs(positions, spec)
        y = self.empty(x.shape)
        self.launch("rope_f32", (t * heads,), self.threads(min(hd, 256)), x.ptr, x.ld, y.ptr, cos_t.ptr,
                    sin_t.ptr, pos.ptr, heads, hd, spec.dim, int(spec.neox))
        return y

    def rope_qk(self, q: DeviceArray, k: DeviceArray, positions, spec: RopeSpec):
        """rope(q) and rope(k) at the same positions, in one launch."""
        t, heads_q, hd = q.shape
        heads_k = k.shape[1]
        cos_t, sin_t, pos = self._rope_inputs(positions, spec)
        yq, yk = self.empty(q.shape), self.empty(k.shape)
        self.launch("rope_qk_f32", (t * (heads_q + heads_k),), self.threads(min(hd, 256)), q.ptr, q.ld, k.ptr,
                    k.ld, yq.ptr, yk.ptr, cos_t.ptr, sin_t.ptr, pos.ptr, heads_q, heads_k, hd, spec.dim,
                    int(spec.neox))
        return yq, yk

    def attention(self, q: DeviceArray, k: DeviceArray, v: DeviceArray, cache: GpuKVCache, layer: int,
                  slots: Sequence[int], starts: Sequence[int], counts: Sequence[int],
                  scale: float, window: int | None) -> DeviceArray:
        n, heads, hd = q.shape
        kv_heads = k.shape[1]
        q = self.contiguous(q)  # k and v (N, kv_heads, hd) may be strided: kv_append takes their ld
        slot_d, pos_d = self._row_index(slots, starts, counts)
        kc, vc = cache.k[layer], cache.v[layer]
        block = self.threads(min(hd, 256))
        self.launch(f"kv_append_{cache.cache_type}", (n * kv_heads,), block, k.ptr, k.ld, v.ptr, v.ld, kc, vc, slot_d.ptr,
                    pos_d.ptr, kv_heads, hd, cache.n_ctx)
        return self._attend(q, kv_heads, cache, layer, slots, slot_d, pos_d, scale, window)

    def rope_attention(self, q: DeviceArray, k: DeviceArray, v: DeviceArray, positions, spec: RopeSpec,
                       cache: GpuKVCache, layer: int, slots: Sequence[int], starts: Sequence[int],
                       counts: Sequence[int], scale: float, window: int | None) -> DeviceArray:
        """rope_qk then attention, the rotations and the cache append in one launch
        (rope_qk_kv_append_<type>: q rotated into a contiguous copy, k rotated straight into the cache)."""
        n, heads, hd = q.shape
        kv_heads = k.shape[1]
        cos_t, sin_t, pos = self._rope_inputs(positions, spec)
        slot_d, pos_d = self._row_index(slots, starts, counts)
        if self._fused_rope_decode(n, hd, cache, slots):
            return self._attend(q, kv_heads, cache, layer, slots, slot_d, pos_d, scale, window,
                                rope=(k, v, cos_t, sin_t, pos, spec))
        yq = self.empty(q.shape)
        self.launch(f"rope_qk_kv_append_{cache.cache_type}", (n * (heads + kv_heads),), self.threads(min(hd, 256)),
                    q.ptr, q.ld, k.ptr, k.ld, v.ptr, v.ld, yq.ptr, cache.k[layer], cache.v[layer], cos_t.ptr,
                    sin_t.ptr, pos.ptr, slot_d.ptr, pos_d.ptr, heads, kv_heads, hd, cache.n_ctx, spec.dim,
                    int(spec.neox))
        return self._attend(yq, kv_heads, cache, layer, slots, slot_d, pos_d, scale, window)

    def _fused_rope_decode(self, n: int, hd: int, cache: GpuKVCache, slots) -> bool:
        """Decode rows (one per sequence) over an f16 cache, when rope_in_attention: the rotations and the
        cache append run inside the attention's blocks (attn_gqa_rope_f16_<hd>), no launch of their own
        (otherwise rope_qk_kv_append first)."""
        if not self.rope_in_attention or self._flash_prefill(n, hd, slots) or not self._gqa_decode(cache, hd):
            return False
        return isinstance(slots, DeviceArray) or len(set(map(int, slots))) == n

    def _attend(self, q: DeviceArray, kv_heads: int, cache: GpuKVCache, layer: int, slots, slot_d: DeviceArray,
                pos_d: DeviceArray, scale: float, window: int | None, rope=None) -> DeviceArray:
        """Attention of q rows over the cache: contiguous and their keys and values already in it, or, with
        `rope` = (k, v, cos, sin, positions, spec), q a slice to rotate and k / v still to append
        (_fused_rope_decode)."""
        n, heads, hd = q.shape
        kc, vc = cache.k[layer], cache.v[layer]
        if self._flash_prefill(n, hd, slots):
            out = self.empty((n, heads * hd))
            block = FA_WARPS * self.warp if self.warp > 1 else 1  # the emulation's one thread plays both warps
            self.launch(f"fattn_{cache.cache_type}", (-(-n // FA_ROWS), heads), block, q.ptr, kc, vc, out.ptr,
                        slot_d.ptr, pos_d.ptr, n, heads, kv_heads, hd, cache.n_ctx, float(scale), int(window or 0))
            return out
        out = self.empty((n, heads * hd))
        if self.q8_activations and hd % mvq.Q8_BLOCK == 0:  # for the output projection's int8 mat-vec
            out.q8 = mvq.empty_q8(self, n, heads * hd)
        xq, xd = (out.q8[0].ptr, out.q8[1].ptr) if out.q8 else (0, 0)
        att_block = self.threads(4 * self.warp)
        if self._gqa_decode(cache, hd):
            kv_blocks = kv_heads * -(-(heads // kv_heads) // GQA_HEADS)
            splits = self._gqa_splits(n, cache.n_ctx, kv_blocks)
            part_acc = part_ml = None
            if splits > 1:
                part_acc, part_ml = self.empty((n, heads, splits, hd)), self.empty((n, heads, splits, 2))
            parts = (part_acc.ptr if part_acc else 0, part_ml.ptr if part_ml else 0)
            if rope is None:
                self.launch(f"attn_gqa_f16_{hd}", (kv_blocks, n, splits), att_block, q.ptr, kc, vc, out.ptr, *parts,
                            slot_d.ptr, pos_d.ptr, heads, kv_heads, cache.n_ctx, float(scale), int(window or 0), xq,
                            xd, self.gqa_split_keys)
            else:
                k, v, cos_t, sin_t, pos, spec = rope
                self.launch(f"attn_gqa_rope_f16_{hd}", (kv_blocks, n, splits), att_block, q.ptr, q.ld, k.ptr, k.ld,
                            v.ptr, v.ld, kc, vc, out.ptr, *parts, cos_t.ptr, sin_t.ptr, pos.ptr, slot_d.ptr,
                            pos_d.ptr, heads, kv_heads, cache.n_ctx, float(scale), int(window or 0), xq, xd,
                            self.gqa_split_keys, spec.dim, int(spec.neox))
            if splits > 1:
                self.launch("attn_combine_f32", (heads, n), self.threads(min(hd, 256)), part_acc.ptr, part_ml.ptr,
                            out.ptr, heads, hd, splits, xq, xd, pos_d.ptr, int(window or 0), self.gqa_split_keys)
            return out
        splits = self._attention_splits(n, cache.n_ctx)
        if splits == 1:
            self.launch(f"attn_{cache.cache_type}", (heads, n), att_block, q.ptr, kc, vc, out.ptr, slot_d.ptr, pos_d.ptr,
                        heads, kv_heads, hd, cache.n_ctx, float(scale), int(window or 0), xq, xd)
            return out
        part_acc, part_ml = self.empty((n, heads, splits, hd)), self.empty((n, heads, splits, 2))
        self.launch(f"attn_split_{cache.cache_type}", (heads, n, splits), att_block, q.ptr, kc, vc, part_acc.ptr, part_ml.ptr,
                    slot_d.ptr, pos_d.ptr, heads, kv_heads, hd, cache.n_ctx, float(scale), int(window or 0))
        self.launch("attn_combine_f32", (heads, n), self.threads(min(hd, 256)), part_acc.ptr, part_ml.ptr, out.ptr,
                    heads, hd, splits, xq, xd, pos_d.ptr, int(window or 0), 0)
        return out

    def _flash_prefill(self, rows: int, hd: int, slots) -> bool:
        """Prompt rows of one sequence go to the matrix-unit flash attention (hip_kernels/fattn.hip); f16
        products, so not when every product is to stay float32 (ROCMFORGE_GPU_Q8=0)."""
        one = self._one_sequence if isinstance(slots, DeviceArray) else len(set(map(int, slots))) == 1
        return (self.matrix_tiles and self.q8_activations and rows >= FA_MIN_ROWS and hd % 16 == 0 and hd <= FA_MAX_HD
                and one)

    def _gqa_decode(self, cache: GpuKVCache, hd: int) -> bool:
        """Decode rows over an f16 cache take the per-KV-head kernel (attn_gqa_f16_<hd>)."""
        return self.gqa_attention and cache.cache_type == "f16" and hd in GQA_HEAD_DIMS

    def _gqa_splits(self, rows: int, n_ctx: int, kv_blocks: int) -> int:
        """Splits of each row's keys for attn_gqa: enough blocks to give every multiprocessor
        gqa_blocks_per_sm of them, no split shorter than gqa_min_keys of the cache's capacity, at most
        ATT_MAX_SPLITS; one (no combine launch) for prompt-sized batches. Fixed by the shapes, not by the row's
        current length, so one captured graph serves every position."""
        if rows > 8:
            return 1
        want = -(-self.gqa_blocks_per_sm * self.device.multiprocessors // (kv_blocks * rows))
        return max(1, min(ATT_MAX_SPLITS, want, n_ctx // self.gqa_min_keys))

    def _attention_splits(self, rows: int, n_ctx: int) -> int:
        """Blocks per (head, row) for decode-sized batches: the keys a cache can hold split in chunks of
        about attn_keys_per_split, so a long context spreads over the card (flash-decoding); each block
        takes an equal share of the row's current length, so one captured graph serves every position."""
        if rows > 8:
            return 1
        return max(1, min(ATT_MAX_SPLITS, n_ctx // self.attn_keys_per_split))

    def _row_index(self, slots, starts, counts) -> tuple[DeviceArray, DeviceArray]:
        """Device arrays of each row's cache slot and position; every layer of a step shares them."""
        if isinstance(slots, DeviceArray):  # a decode step's own buffers: one row per sequence
            if not isinstance(starts, DeviceArray) or any(c != 1 for c in counts):
                raise GpuError("device slots need device positions and one row per sequence")
            return slots, starts
        key = (tuple(map(int, slots)), tuple(map(int, starts)), tuple(map(int, counts)))
        if self._row_key != key:
            row_slot = np.repeat(np.asarray(key[0], dtype=np.int64), key[2])
            row_pos = np.concatenate([np.arange(s, s + c) for s, c in zip(key[1], key[2])])
            self._row_arrays = (self.upload(row_slot, np.int32), self.upload(row_pos, np.int32))
            self._row_key = key
        return self._row_arrays

    # ---- sampling helpers (device-side)
    def softmax(self, x: DeviceArray) -> DeviceArray:
        x = self.contiguous(x)
        n = x.shape[-1]
        y = self.empty(x.shape)
        self.launch("softmax_f32", (x.size // n,), self.threads(min(n, 256)), x.ptr, y.ptr, n)
        return y

    def argmax(self, x: DeviceArray) -> np.ndarray:
        return self.to_host(self.argmax_device(x))

    def argmax_device(self, x: DeviceArray) -> DeviceArray:
        """(rows,) int32 index of each row's largest value (lowest on ties), left on the device."""
        x = self.contiguous(x)
        out = self.empty((x.size // x.shape[-1],), np.int32)
        self.argmax_into(x, out)
        return out

    def sample_into(self, logits: DeviceArray, params: DeviceArray, out: DeviceArray) -> None:
        """Each row's token drawn on the device (hip_kernels/sample.hip): params (rows, 5) float32 =
        temperature, top_k (1..SAMPLE_MAX_K), top_p, min_p and the row's uniform draw u in [0, 1)."""
        rows, n = logits.shape[0], logits.shape[-1]
        ld = logits.ld if not logits.contiguous else n
        if n <= 2 * SAMPLE_SLICE:
            self.launch("sample_topk_f32", (rows,), self.threads(256), logits.ptr, n, ld, params.ptr, out.ptr)
            return
        # Many blocks keep the k best of a slice each, then one block a row draws from those.
        n_slices = -(-n // SAMPLE_SLICE)
        cand_v = self.empty((rows, n_slices * SAMPLE_MAX_K))
        cand_i = self.empty((rows, n_slices * SAMPLE_MAX_K), np.int32)
        self.launch("sample_slices_f32", (n_slices, rows), self.threads(256), logits.ptr, n, ld, params.ptr,
                    SAMPLE_SLICE, cand_v.ptr, cand_i.ptr)
        self.launch("sample_pick_f32", (rows,), self.threads(256), cand_v.ptr, cand_i.ptr, n, SAMPLE_SLICE, n_slices,
                    params.ptr, out.ptr)

    def penalize(self, logits: DeviceArray, penalties: tuple[np.ndarray, np.ndarray],
                 pending: DeviceArray | None = None) -> None:
        """The CPU chain's penalties on the device, in place (hip_kernels/sample.hip penalize_f32):
        penalties = (window (rows, W) int32 ids of each row's recent history, -1 padded; (rows, 3)
        float64 repeat, frequency and presence penalties). With `pending` (rows,) int32 on the device,
        window entries sampler.WINDOW_PENDING are that row's id (fill_window_i32: the newest history id of a
        step queued before the host knew it)."""
        window, pen = penalties
        window = np.ascontiguousarray(window, np.int32)
        rows, n = logits.shape[0], logits.shape[-1]
        if window.shape[0] != rows or window.shape[1] == 0:
            return
        ld = logits.ld if not logits.contiguous else n
        ids, params = self.upload(window), self.upload(np.ascontiguousarray(pen, np.float64))  # held past the launch
        if pending is not None:
            self.launch("fill_window_i32", (rows,), self.threads(128), ids.ptr, window.shape[1], pending.ptr)
        self.launch("penalize_f32", (rows,), self.threads(128), logits.ptr, n, ld, ids.ptr, window.shape[1],
                    params.ptr)

    def sample_rows(self, logits: DeviceArray, params: np.ndarray,
                    penalties: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """sample_into with host parameters (penalized first, in place, when given); returns the (rows,)
        int64 ids."""
        if penalties is not None:
            self.penalize(logits, penalties)
        out = self.empty((logits.shape[0],), np.int32)
        self.sample_into(logits, self.upload(np.ascontiguousarray(params, np.float32)), out)
        return self.to_host(out).astype(np.int64)

    def argmax_into(self, x: DeviceArray, out: DeviceArray) -> None:
        n = x.shape[-1]
        self.launch("argmax_f32", (x.size // n,), self.threads(min(n, 1024)), x.ptr, out.ptr, n)


def make_ops(name: str = "cuda") -> GpuOps:
    """Entry point (see rocmforge_core.models.make_ops): the ops of runtime `name` ("hip" or "cuda")."""
    from rocmforge_core.gpu import open_runtime

    return GpuOps(open_runtime(name), name)
