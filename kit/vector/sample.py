"""Random vectors for fixtures and tests: unit length, uniform in direction, the same for the same seed."""

from __future__ import annotations

import functools
import statistics
from typing import Any

import numpy as np

__all__ = ["unit_vectors"]


@functools.cache
def _normal_quantiles() -> np.ndarray:
    """The standard normal distribution at 65,536 evenly spaced probabilities: a 16-bit normal sampler."""
    inverse = statistics.NormalDist().inv_cdf
    upper = np.array([inverse((i + 0.5) / 65536) for i in range(32768, 65536)], dtype=np.float32)
    return np.concatenate([-upper[::-1], upper])  # symmetric: the lower half mirrors the upper


def unit_vectors(seed: int, rows: int, dimensions: int, dtype: Any = np.float32) -> np.ndarray:
    """`rows` random unit-length vectors, uniform in direction; the same seed gives the same vectors.

    Each element is a normal draw quantised to 16 bits (random bits looked up in a table of normal
    quantiles), which is 3-4x faster than numpy's normal sampler and makes no visible difference here.
    """
    bits = np.random.Generator(np.random.SFC64(seed)).bytes(rows * dimensions * 2)
    matrix = np.take(_normal_quantiles(), np.frombuffer(bits, dtype="<u2").reshape(rows, dimensions))
    matrix /= np.sqrt(np.einsum("ij,ij->i", matrix, matrix))[:, None]
    return matrix.astype(dtype, copy=False)
