"""Weight uploads through page-locked staging: the host reads the memory-mapped file into one of two
pinned buffers while the device copies the other in.

A copy from ordinary (pageable) memory makes the driver stage it through its own buffer and the host
wait for every byte; from page-locked memory the copy runs asynchronously, so reading the next chunk
of the file (page faults, or a memcpy out of the page cache) overlaps the transfer of this one. Each
buffer is refilled only after the device has finished copying out of it (one event per buffer).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rocmforge_core.gpu.runtime import PinnedArray

CHUNK_BYTES = 16 << 20


class Stager:
    """Double-buffered host -> device copies on one stream; `close` waits for them and frees the buffers."""

    def __init__(self, rt: Any, stream: Any, chunk: int = CHUNK_BYTES):
        self.rt, self.stream, self.chunk = rt, stream, int(chunk)
        self.buffers = [PinnedArray(rt, (self.chunk,), np.uint8) for _ in range(2)]
        self.events = [rt.event_create() for _ in range(2)]
        self.busy = [False, False]
        self.turn = 0
        self.bytes = 0  # copied so far (for the load report)

    def copy(self, dst: int, raw: np.ndarray) -> None:
        """Queue the copy of raw's bytes (any C-contiguous array) to device address dst. Returns once
        the last chunk is in a pinned buffer: raw itself is not read after that."""
        src = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
        for off in range(0, src.nbytes, self.chunk):
            n = min(self.chunk, src.nbytes - off)
            b = self.turn
            self.turn ^= 1
            if self.busy[b]:
                self.rt.event_synchronize(self.events[b])  # the device is done reading this buffer
            buf = self.buffers[b].array
            buf[:n] = src[off:off + n]
            self.rt.copy_htod(dst + off, buf, n, self.stream)
            self.rt.event_record(self.events[b], self.stream)
            self.busy[b] = True
        self.bytes += src.nbytes

    def close(self) -> None:
        for b, event in enumerate(self.events):
            if self.busy[b]:
                self.rt.event_synchronize(event)
            self.rt.event_destroy(event)
        for buf in self.buffers:
            buf.close()
        self.events, self.buffers, self.busy = [], [], [False, False]
