"""Rotary position embedding shared by the models and every backend: what a layer's rope is
(`RopeSpec`), its per-position angles, and the pair layout the numpy backend rotates with.

Models describe their ropes with RopeSpec; backends turn a spec into cos/sin tables. Both import
from here so neither has to import the other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RopeSpec:
    """How one layer rotates q and k. `freq_factors` divides the per-pair frequencies (llama3)."""

    dim: int                 # rotated dimensions (the rest of the head passes through)
    base: float
    neox: bool               # pairs (i, i + dim/2) when True, adjacent pairs (2i, 2i+1) otherwise
    pos_scale: float = 1.0   # linear scaling: positions are multiplied by this (1 / factor)
    freq_factors: tuple[float, ...] | None = None

    def inv_freq(self) -> np.ndarray:
        inv = self.base ** (-np.arange(0, self.dim, 2, dtype=np.float64) / self.dim)
        if self.freq_factors is not None:
            inv = inv / np.asarray(self.freq_factors, dtype=np.float64)
        return inv


def table_size(max_pos: int) -> int:
    """Positions a table holds to cover max_pos: powers of two, so a long context rebuilds it rarely."""
    return max(1024, 1 << int(max_pos).bit_length())


def angles(spec: RopeSpec, n: int) -> np.ndarray:
    """Rotation angles (n, dim/2) of positions 0..n-1, in float64 (rounded once, by the caller)."""
    return np.outer(np.arange(n, dtype=np.float64) * spec.pos_scale, spec.inv_freq())


def cos_sin(spec: RopeSpec, n: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 cos and sin (n, dim/2) of `angles`: the tables both float32 backends rotate with."""
    a = angles(spec, n)
    return np.cos(a).astype(np.float32), np.sin(a).astype(np.float32)


def angles_ggml(positions: np.ndarray, spec: RopeSpec) -> np.ndarray:
    """Rotation angles (T, dim/2) computed as ggml does: float32, theta *= base^(-2/dim) per pair."""
    half = spec.dim // 2
    theta_scale = np.float32(spec.base) ** np.float32(-2.0 / spec.dim)
    steps = np.full((len(positions), half), theta_scale, dtype=np.float32)
    steps[:, 0] = positions.astype(np.float32)
    theta = np.cumprod(steps, axis=1, dtype=np.float32)  # sequential products, like ggml's loop
    if spec.freq_factors is not None:
        theta = theta / np.asarray(spec.freq_factors, dtype=np.float32)
    return theta * np.float32(spec.pos_scale)


@dataclass(frozen=True)
class PairTable:
    """cos/sin of one RopeSpec for positions 0..n-1, laid out so rotation is two products and a sum.

    Each rotated pair (a, b) becomes (a cos - b sin, b cos + a sin). With `partner` the index of each
    dimension's pair partner, `cos` holding each pair's cosine at both members and `sin` holding
    -sin at the first member and +sin at the second, that is x * cos + x[partner] * sin. IEEE
    arithmetic makes a + b * (-s) equal a - b * s bit for bit, so the results are those of the
    textbook formula.
    """

    cos: np.ndarray      # (n, 1, dim) float32
    sin: np.ndarray      # (n, 1, dim) float32, signed as above
    partner: np.ndarray  # (dim,) int
    first: np.ndarray    # (dim,) bool: the first member of its pair

    @classmethod
    def build(cls, spec: RopeSpec, cos: np.ndarray, sin: np.ndarray) -> "PairTable":
        """From per-pair float32 cos/sin (n, dim/2)."""
        n, half = cos.shape[0], spec.dim // 2
        if spec.neox:  # pairs (i, i + half)
            cos2, sin2 = np.concatenate([cos, cos], 1), np.concatenate([-sin, sin], 1)
            partner = np.concatenate([np.arange(half, spec.dim), np.arange(half)])
        else:          # pairs (2i, 2i + 1)
            cos2, sin2 = np.repeat(cos, 2, axis=1), np.stack([-sin, sin], 2).reshape(n, spec.dim)
            partner = np.arange(spec.dim) ^ 1
        first = np.arange(spec.dim) < half if spec.neox else np.arange(spec.dim) % 2 == 0
        return cls(cos2[:, None, :], sin2[:, None, :], partner, first)
