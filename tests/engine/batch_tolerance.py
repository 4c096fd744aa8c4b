"""How close an image rendered in a batch must be to the same seed rendered alone.

A seed fixes the starting noise of its own image, whatever the batch, but not the rounding of the
arithmetic after it: on CPUs with AVX-512 a batched matrix product takes other kernel paths
(other blocking, another summation order) than the same product for one image, so a batch can
put a channel one or two levels of 255 off here and there. Identical batches still give identical
bytes. The README (Local models) states this tolerance; these are its numbers.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

MAX_CHANNEL_DIFFERENCE = 2  # of 255, in any channel of any pixel
MAX_MEAN_DIFFERENCE = 0.05  # of 255, averaged over every channel of every pixel


def _levels(image: bytes | ArrayLike) -> np.ndarray:
    if isinstance(image, bytes):
        return np.frombuffer(image, dtype=np.uint8).astype(np.int16)
    return np.asarray(image).astype(np.int16)


def render_difference(a: bytes | ArrayLike, b: bytes | ArrayLike) -> tuple[int, float]:
    """(largest, mean) absolute difference between two renders of the same shape, in levels of 255."""
    left, right = _levels(a), _levels(b)
    assert left.shape == right.shape, (left.shape, right.shape)
    diff = np.abs(left - right)
    return int(diff.max()), float(diff.mean())


def assert_same_render(a: bytes | ArrayLike, b: bytes | ArrayLike) -> None:
    """The same seed and settings, rendered in batches of other sizes: equal within the tolerance."""
    largest, mean = render_difference(a, b)
    assert largest <= MAX_CHANNEL_DIFFERENCE and mean <= MAX_MEAN_DIFFERENCE, (
        f"renders differ by up to {largest} levels (mean {mean:.4f}); the tolerance is "
        f"{MAX_CHANNEL_DIFFERENCE} (mean {MAX_MEAN_DIFFERENCE})"
    )
