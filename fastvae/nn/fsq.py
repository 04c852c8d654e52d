"""FSQ: a finite scalar quantisation layer (Mentzer et al. 2023), with optional projections."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from fastvae.ops import _checks
from fastvae.ops.fsq import FSQOutput, check_levels, fsq, fsq_indices_to_codes

__all__ = ["FSQ", "FSQOutput"]


class FSQ(nn.Module):
    """Finite scalar quantisation of the channel dim, as vector-quantize-pytorch's ``FSQ`` with its
    default options (``preserve_symmetry=False``, projections with bias).

    Forward moves ``channel_dim`` last, projects ``dim`` channels to ``len(levels)`` with
    ``project_in`` (an ``nn.Linear`` with bias when ``dim`` is given and differs from
    ``len(levels)``, else the identity), quantises with :func:`fastvae.fsq` (bound, round with a
    straight-through gradient, scale; see there), projects back with ``project_out`` and moves the
    channels back. Nothing is learned but the projections; there is no loss.

    Args:
        levels: list or tuple of ints ``>= 2``, one per code dim (``prod(levels) <= 2**63``); the
            paper recommends e.g. ``[8, 5, 5, 5]`` (codebook of 1,000) or ``[7, 5, 5, 5, 5]``
            (4,375). Levels of 2 are accepted (codes ``{-1, 0}``, see :func:`fastvae.fsq`).
        dim: the number of input channels; None for ``len(levels)``.
        channel_dim: the input dim that holds the channels.

    Attributes:
        levels: the levels as a tuple.
        codebook_size: ``prod(levels)``, the number of distinct codes.
        project_in, project_out: the projections (``nn.Identity`` without them).

    Shapes:
        input ``x``: any shape with ``dim`` channels along ``channel_dim``; float16, bfloat16,
        float32 or float64 (the projections' dtype when there are projections). Output:
        :class:`FSQOutput` ``(quantized, indices)``, ``quantized`` in ``x``'s layout and dtype,
        ``indices`` int64 of ``x``'s shape without ``channel_dim``.
    """

    def __init__(self, levels: Sequence[int], *, dim: int | None = None, channel_dim: int = -1) -> None:
        super().__init__()
        self.levels = check_levels(levels)
        codebook_dim = len(self.levels)
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
            raise ValueError(f"dim must be None or an int >= 1, got {dim!r}")
        self.dim = codebook_dim if dim is None else dim
        if isinstance(channel_dim, bool) or not isinstance(channel_dim, int):
            raise TypeError(f"channel_dim must be an int, got {type(channel_dim).__name__}")
        self.channel_dim = channel_dim
        self.codebook_size = math.prod(self.levels)
        projected = self.dim != codebook_dim
        self.project_in = nn.Linear(self.dim, codebook_dim) if projected else nn.Identity()
        self.project_out = nn.Linear(codebook_dim, self.dim) if projected else nn.Identity()

    def extra_repr(self) -> str:
        return f"levels={list(self.levels)}, dim={self.dim}, channel_dim={self.channel_dim}"

    def forward(self, x: torch.Tensor) -> FSQOutput:
        """Quantise ``x``; returns :class:`FSQOutput` as described in the class docstring."""
        x = _checks.tensor(x, "x", min_dim=1)
        channel_dim = _checks.dim_index(self.channel_dim, "channel_dim", x.dim())
        if x.shape[channel_dim] != self.dim:
            raise ValueError(
                f"x must have dim={self.dim} channels along channel_dim={self.channel_dim}, got shape {tuple(x.shape)}"
            )
        weight = getattr(self.project_in, "weight", None)
        if weight is not None and x.dtype != weight.dtype:
            raise TypeError(f"x must have the projections' dtype {weight.dtype}, got {x.dtype}")
        quantized, indices = fsq(self.project_in(x.movedim(channel_dim, -1)), self.levels)
        return FSQOutput(self.project_out(quantized).movedim(-1, channel_dim), indices)

    def indices_to_codes(self, indices: torch.Tensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The outputs that ``indices`` stand for: the inverse of the index map, then ``project_out``.

        Args:
            indices: integer tensor (int64, or int32 as vector-quantize-pytorch returns) of the shape
                :meth:`forward` returns, values in ``[0, codebook_size)`` (others are taken modulo
                ``codebook_size``).
            dtype: the dtype of the codes; None for the projections' (float32 without projections).
                With projections it must be theirs.

        Returns:
            The codes with ``dim`` channels inserted at ``channel_dim`` (``indices.dim() + 1`` dims in
            all), as :meth:`forward`'s ``quantized`` is laid out, in ``dtype`` on ``indices``' device:
            for the indices ``forward`` returned, equal to its ``quantized`` in the same dtype.
            Differentiable with respect to ``project_out`` only.

        Raises:
            TypeError: non-integer ``indices``; a ``dtype`` that is not floating, or not the projections'.
            ValueError: ``channel_dim`` out of range for ``indices.dim() + 1`` dims.
        """
        weight = getattr(self.project_out, "weight", None)
        if weight is not None and dtype is not None and dtype != weight.dtype:
            raise TypeError(f"dtype must be None or the projections' dtype {weight.dtype}, got {dtype}")
        if dtype is None:
            dtype = torch.float32 if weight is None else weight.dtype
        codes = fsq_indices_to_codes(indices, self.levels, dtype=dtype)
        channel_dim = _checks.dim_index(self.channel_dim, "channel_dim", codes.dim())
        return self.project_out(codes).movedim(-1, channel_dim)
