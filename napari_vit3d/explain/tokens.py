"""Token grids: where each token of a transformer stage sits in the model's input window.

A :class:`TokenGrid` says, for a grid of tokens of shape ``(D, H, W)`` (row-major, the order every
architecture here flattens its tokens in), the centre of token ``(a, b, c)`` in *input-window voxel
coordinates*: ``centre = origin + index * step`` (per axis). A patch's centre is not its corner: a
non-overlapping patch of size ``p`` starting at voxel ``p·a`` has its centre at ``p·a + (p − 1)/2``;
a convolution with kernel ``k``, stride ``s`` and padding ``q`` puts output ``a`` at the centre of its
receptive field ``s·a − q + (k − 1)/2`` of the grid it reads.

:meth:`TokenGrid.affine` turns this into a token-index → world (RAS mm) affine, used for metadata; the
placement of token maps into the model grid is :meth:`napari_vit3d.explain.session.ExplainSession.place_tokens`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import GeometryError


def _vec3(v) -> np.ndarray:
    a = np.asarray(v, dtype=float).reshape(-1)
    if a.size == 1:
        a = np.repeat(a, 3)
    if a.size != 3:
        raise GeometryError(f"expected 3 values, got {a.size}")
    return a


@dataclass(frozen=True)
class TokenGrid:
    """Token centres ``origin + index * step`` in input-window voxel coordinates (see module doc)."""

    shape: tuple[int, int, int]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    step: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "origin", tuple(float(x) for x in _vec3(self.origin)))
        object.__setattr__(self, "step", tuple(float(x) for x in _vec3(self.step)))
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise GeometryError(f"a token grid needs 3 positive sizes, got {self.shape}")

    @classmethod
    def voxels(cls, shape) -> TokenGrid:
        """The input window itself: one 'token' per voxel."""
        return cls(tuple(shape), (0, 0, 0), (1, 1, 1))

    @classmethod
    def tiles(cls, input_shape, grid_shape) -> TokenGrid:
        """Non-overlapping patches that tile ``input_shape`` (patch = input / grid per axis)."""
        inp, grid = _vec3(input_shape), _vec3(grid_shape)
        step = inp / grid
        return cls(tuple(int(g) for g in grid), (step - 1) / 2.0, step)

    def conv(self, kernel, stride, padding, out_shape) -> TokenGrid:
        """The grid produced by a convolution (kernel, stride, padding) applied to this grid."""
        k, s, q = _vec3(kernel), _vec3(stride), _vec3(padding)
        o, st = np.asarray(self.origin), np.asarray(self.step)
        return TokenGrid(tuple(out_shape), o + st * (-q + (k - 1) / 2.0), st * s)

    @property
    def n_tokens(self) -> int:
        return int(np.prod(self.shape))

    def centre(self, index) -> np.ndarray:
        """Window voxel coordinates of token ``index`` ((3,) or (n, 3) integer grid indices)."""
        idx = np.asarray(index, dtype=float)
        return np.asarray(self.origin) + idx * np.asarray(self.step)

    def nearest_token(self, window_voxel) -> tuple[int, int, int]:
        """The token whose centre is nearest a (continuous) window voxel coordinate, clipped to the grid."""
        x = _vec3(window_voxel)
        idx = np.floor((x - np.asarray(self.origin)) / np.asarray(self.step) + 0.5)
        idx = np.clip(idx, 0, np.asarray(self.shape) - 1).astype(int)
        return tuple(int(i) for i in idx)

    def flat(self, index) -> int:
        return int(np.ravel_multi_index(tuple(int(i) for i in index), self.shape))

    def unflat(self, flat: int) -> tuple[int, int, int]:
        return tuple(int(i) for i in np.unravel_index(int(flat), self.shape))

    def affine(self, window_affine) -> np.ndarray:
        """Token index (a, b, c) → world mm, given the window's voxel → world affine."""
        t = np.eye(4)
        t[:3, :3] = np.diag(self.step)
        t[:3, 3] = self.origin
        return np.asarray(window_affine, dtype=float) @ t

