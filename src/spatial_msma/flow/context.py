"""The flow's context: a sinusoidal code of the voxel position and global features h(x) of the image.

Both are plain torch modules. The image encoder is two ``nn.Conv3d`` layers, not a MONAI network: the
paper's encoder is exactly a large-kernel strided conv followed by a stride-2 conv, and importing MONAI
is slow enough that every job that only needs those two layers would pay it for nothing.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class PositionCode(nn.Module):
    """Transformer-style sinusoidal code of integer voxel indices, ``dims/6`` frequencies per axis.

    Wavelengths are geometric from ``min_wavelength`` voxels up to twice the grid extent of the axis, so
    the slowest component is monotonic across the volume (a unique, smooth coordinate) and the fastest
    resolves neighbourhoods of a few voxels. Output layout per axis x, y, z: [sin f_1..f_F, cos f_1..f_F].
    """

    def __init__(self, shape: tuple[int, int, int], dims: int, min_wavelength: float = 4.0):
        super().__init__()
        if dims % 6:
            raise ValueError(f"position code dims must be a multiple of 6, got {dims}")
        n_freq = dims // 6
        rows = []
        for extent in shape:
            max_wavelength = max(2.0 * extent, min_wavelength)
            wl = torch.logspace(math.log10(min_wavelength), math.log10(max_wavelength), n_freq,
                                dtype=torch.float64) if n_freq > 1 else torch.tensor([max_wavelength],
                                                                                     dtype=torch.float64)
            rows.append(2.0 * math.pi / wl)
        self.register_buffer("freqs", torch.stack(rows).float())  # (3, n_freq)
        self.dims = dims

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        """(N, 3) integer voxel indices -> (N, dims) float32."""
        phase = index.to(self.freqs.dtype)[:, :, None] * self.freqs[None]  # (N, 3, F)
        return torch.cat([torch.sin(phase), torch.cos(phase)], dim=2).reshape(index.shape[0], self.dims)


class GlobalImageEncoder(nn.Module):
    """h(x): large-receptive-field conv features of the whole image, attention-pooled to one vector.

    Conv3d(kernel ``kernel``, stride ``stride``) -> GELU -> Conv3d(3, stride 2) -> GELU gives a coarse grid
    of tokens (96x112x80 at 2 mm: 6x7x5 = 210 tokens; 48x56x40: 3x4x3); a learned query attends over
    them (``nn.MultiheadAttention``) and a linear layer maps to ``dims``. Pooling by attention rather than
    averaging lets the encoder weight the informative regions; it works for any grid size.
    """

    def __init__(self, in_channels: int, channels: tuple[int, int], dims: int, kernel: int = 17,
                 stride: int = 8, heads: int = 4):
        super().__init__()
        c1, c2 = channels
        self.convs = nn.Sequential(
            nn.Conv3d(in_channels, c1, kernel, stride=stride, padding=kernel // 2),
            nn.GELU(),
            nn.Conv3d(c1, c2, 3, stride=2, padding=1),
            nn.GELU(),
        )
        self.query = nn.Parameter(torch.zeros(1, 1, c2))
        self.pool = nn.MultiheadAttention(c2, heads, batch_first=True)
        self.out = nn.Linear(c2, dims)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, X, Y, Z) images -> (B, dims) features."""
        tokens = self.convs(images).flatten(2).transpose(1, 2)  # (B, T, c2)
        pooled, _ = self.pool(self.query.expand(images.shape[0], -1, -1), tokens, tokens, need_weights=False)
        return self.out(pooled[:, 0])
