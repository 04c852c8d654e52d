"""Image grids as PNG files (Pillow), for samples and reconstructions during and after training."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image

from fastvae.train.checkpoint import atomic_write

__all__ = ["as_images", "make_grid", "reconstruction_grid", "save_png"]


def as_images(batch: torch.Tensor, input_shape: tuple[int, ...]) -> tuple[torch.Tensor, int | None]:
    """A batch of data-space examples as images to tile, with the row length it suggests.

    Args:
        batch: ``(B, *input_shape)`` floats.
        input_shape: ``(C, H, W)`` images as they are; ``(D,)`` vectors as ``1 x s x s`` images when
            ``D = s^2`` (784 -> 28 x 28), else as ``1 x 1 x D`` strips; ``(T, C, H, W)`` sequences
            as their frames, one sequence per row.

    Returns:
        ``(images (N, C, H, W), row)``: ``row`` is ``T`` for sequences, else None (choose freely).
    """
    b = batch.shape[0]
    if len(input_shape) == 3:
        return batch, None
    if len(input_shape) == 4:
        return batch.reshape(b * input_shape[0], *input_shape[1:]), input_shape[0]
    if len(input_shape) == 1:
        (d,) = input_shape
        side = math.isqrt(d)
        if side * side == d:
            return batch.reshape(b, 1, side, side), None
        return batch.reshape(b, 1, 1, d), 1
    raise ValueError(f"input_shape must be (D,), (C, H, W) or (T, C, H, W), got {input_shape!r}")


def make_grid(images: torch.Tensor, nrow: int | None = None, *, padding: int = 2, pad_value: float = 0.5) -> torch.Tensor:
    """Tile ``images`` row-major into one image.

    Args:
        images: ``(N, C, H, W)`` floats, values in ``[0, 1]`` (clamped).
        nrow: images per row (default ``ceil(sqrt(N))``).
        padding: pixels between and around the tiles.
        pad_value: the padding's grey level.

    Returns:
        float32 ``(C, rows * (H + padding) + padding, nrow * (W + padding) + padding)``.
    """
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"images must have shape (N, C, H, W) with N >= 1, got {tuple(images.shape)}")
    n, c, h, w = images.shape
    nrow = max(1, min(nrow or math.ceil(math.sqrt(n)), n))
    rows = math.ceil(n / nrow)
    grid = torch.full((c, rows * (h + padding) + padding, nrow * (w + padding) + padding), float(pad_value))
    images = images.detach().float().cpu().clamp(0.0, 1.0)
    for i in range(n):
        top = padding + (i // nrow) * (h + padding)
        left = padding + (i % nrow) * (w + padding)
        grid[:, top : top + h, left : left + w] = images[i]
    return grid


def reconstruction_grid(x: torch.Tensor, recon: torch.Tensor, nrow: int = 8) -> tuple[torch.Tensor, int]:
    """Originals and reconstructions interleaved by rows (a row of ``nrow`` inputs, then the row of
    their reconstructions): ``x``, ``recon`` ``(N, C, H, W)`` -> ``(images (2N', C, H, W), nrow)``
    with ``N'`` the largest multiple of ``nrow`` not above ``N`` (or ``N`` when smaller)."""
    nrow = min(nrow, x.shape[0])
    n = x.shape[0] // nrow * nrow
    pairs = torch.stack([x[:n].reshape(-1, nrow, *x.shape[1:]), recon[:n].reshape(-1, nrow, *x.shape[1:])], dim=1)
    return pairs.reshape(2 * n, *x.shape[1:]), nrow


def save_png(grid: torch.Tensor, path: Path) -> Path:
    """Write a ``(C, H, W)`` grid with values in ``[0, 1]`` as an 8-bit PNG, atomically.

    One channel is written as greyscale, three as RGB, others as the greyscale mean of the channels.
    """
    if grid.dim() != 3:
        raise ValueError(f"grid must have shape (C, H, W), got {tuple(grid.shape)}")
    if grid.shape[0] not in (1, 3):
        grid = grid.mean(0, keepdim=True)
    pixels = (grid.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    array = pixels.permute(1, 2, 0).contiguous()
    height, width, channels = array.shape
    mode = "L" if channels == 1 else "RGB"
    data = bytes(array.reshape(-1).tolist())
    image = Image.frombytes(mode, (width, height), data)
    path = Path(path)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
    return path
