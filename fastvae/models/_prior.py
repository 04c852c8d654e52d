"""The autoregressive prior over a grid of VQ codes: a small gated PixelCNN.

van den Oord et al., "Conditional Image Generation with PixelCNN Decoders" (NeurIPS 2016), as the
VQ-VAE papers use it (van den Oord et al. 2017; Razavi et al. 2019 add self-attention, which this
small prior leaves out). It models a code grid ``c (h, w)`` in raster order (row by row, left to
right)::

    p(c) = prod_{i, j} p(c_ij | c_<ij [, condition])

Architecture (``channels`` = C, ``layers`` = L, ``K`` codes):

* an embedding of the codes to C channels, fed to both stacks;
* L gated layers, each with a *vertical* stack (a masked ``k x k`` convolution seeing the rows above)
  and a *horizontal* stack (a masked ``1 x k`` convolution seeing the positions to the left in the
  same row), which together have no blind spot. The first layer (mask "A", ``k = 7``) excludes the
  current position: its vertical kernel keeps only the rows above the centre, its horizontal kernel
  only the columns left of it. Later layers (mask "B", ``k = 3``) include the centre row / column,
  which is safe because their inputs already depend only on earlier positions. Each stack's output
  is the gated activation ``tanh(a) * sigmoid(b)`` of its ``2C`` pre-activations; the vertical
  pre-activation also feeds the horizontal one through a 1 x 1 convolution; the horizontal stack has
  a 1 x 1 output convolution and, after the first layer, a residual connection;
* a head ``ReLU -> 1x1 conv (C) -> ReLU -> 1x1 conv (K)`` giving the logits of every position.

Conditioning (``condition_codes > 0``): a second code grid (VQ-VAE-2's top codes when this is the
bottom prior) is embedded, passed through a 3 x 3 convolution and a ReLU, and upsampled (nearest) to
the modelled grid's size; every gated layer adds a 1 x 1 convolution of that map to both stacks'
pre-activations (the paper's ``V * s`` term). The conditioning grid is known in full, so it is not
masked.

Stages (``stages = Q > 1``, for residual VQ): every position of the ``h x w`` grid holds ``Q`` codes,
one per stage, each from its stage's codebook of ``K`` codes. The prior then models the raster of the
``h x (w Q)`` grid whose column ``j Q + q`` holds stage ``q`` of position ``j`` (``codes.flatten(2)`` of
the ``(B, h, w, Q)`` indices)::

    p(c) = prod_{i, j, q} p(c_ijq | the rows above, the positions left of j, the stages < q at (i, j))

an exact autoregressive factorisation of all ``h w Q`` codes, with one ``K``-way softmax per code. Code
``k`` of stage ``q`` has its own input embedding (row ``q K + k`` of a ``Q K``-row table), and a learned
embedding of each column's stage is laid along the width and added, like a conditioning map, to both
stacks' pre-activations of every layer, so every position knows which stage it predicts. A
conditioning grid of ``Q`` codes per position is embedded the same way and summed over its stages
before the 3 x 3 convolution, then upsampled to ``h x w`` and repeated over each position's ``Q``
columns. A code ``-1`` (a stage that ResidualVQ's quantizer dropout skipped) embeds as zeros and adds
nothing to :meth:`GatedPixelCNN.nll`. The masked kernels count columns, so a ``k``-wide kernel spans
``k / Q`` positions of the grid: a prior over stages sees less of the grid per layer than one over a
single code per position. With ``stages = 1`` (the default) the prior is the one above, weight for
weight.

The prior only ever sees integer code indices and its own embeddings, so no gradient of its loss can
reach the encoder or the codebook.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GatedPixelCNN", "MaskedConv2d"]

#: Kernel size of the first (mask "A") layer, as in PixelCNN.
FIRST_KERNEL = 7
#: Kernel size of the other layers.
KERNEL = 3


def _gate(pre: torch.Tensor) -> torch.Tensor:
    """The gated activation ``tanh(a) * sigmoid(b)`` of ``pre = [a, b]`` along channels: ``(B, 2C, ...) -> (B, C, ...)``."""
    a, b = pre.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class MaskedConv2d(nn.Conv2d):
    """A same-size convolution whose kernel is masked so that it never looks ahead in raster order.

    ``stack="vertical"``: a ``k x k`` kernel keeping the rows above its centre, plus the centre row
    when ``include_centre`` (the whole row: only safe on inputs that already exclude the current
    row, as the vertical stack's do after its first layer). ``stack="horizontal"``: a ``1 x k``
    kernel keeping the columns left of its centre, plus the centre when ``include_centre``.
    ``(B, C_in, h, w) -> (B, C_out, h, w)``; ``k`` odd.
    """

    mask: torch.Tensor

    def __init__(self, in_channels: int, out_channels: int, kernel: int, *, stack: str, include_centre: bool) -> None:
        if kernel % 2 != 1:
            raise ValueError(f"kernel must be odd, got {kernel}")
        centre = kernel // 2
        if stack == "vertical":
            size, padding = (kernel, kernel), (centre, centre)
        elif stack == "horizontal":
            size, padding = (1, kernel), (0, centre)
        else:
            raise ValueError(f"stack must be 'vertical' or 'horizontal', got {stack!r}")
        super().__init__(in_channels, out_channels, size, padding=padding)
        mask = torch.zeros(size)
        kept = centre + int(include_centre)
        if stack == "vertical":
            mask[:kept, :] = 1.0
        else:
            mask[:, :kept] = 1.0
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, C_in, h, w)`` -> ``(B, C_out, h, w)``."""
        return self._conv_forward(x, self.weight * self.mask, self.bias)


class _StageEmbedding(nn.Embedding):
    """Embeddings of the codes of ``stages`` codebooks of ``num_codes`` codes: code ``k`` of stage ``q``
    is row ``q num_codes + k`` of a ``(stages num_codes, C)`` table (with one stage, a plain
    ``nn.Embedding`` of ``num_codes`` rows); a code ``-1`` (a skipped stage) embeds as zeros."""

    def __init__(self, num_codes: int, channels: int, stages: int) -> None:
        super().__init__(stages * num_codes, channels)
        self.num_codes = num_codes
        self.stages = stages

    def rows(self, codes: torch.Tensor, stage: torch.Tensor) -> torch.Tensor:
        """``(..., C)``: the embeddings of int64 ``codes`` of the stages ``stage`` (int64, broadcasting
        with ``codes``)."""
        kept = codes >= 0
        embedded = super().forward(torch.where(kept, codes + stage * self.num_codes, 0))
        return embedded * kept.unsqueeze(-1)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """A grid ``(B, h, w)`` (one stage) or ``(B, h, w, stages)`` to ``(B, h, w, C)``, summed over the stages."""
        if self.stages == 1:
            return super().forward(codes)
        return self.rows(codes, torch.arange(self.stages, device=codes.device)).sum(-2)


class _ChannelsFirst(nn.Module):
    """``(B, h, w, C) -> (B, C, h, w)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)


class _GatedLayer(nn.Module):
    """One gated PixelCNN layer: ``(v, h[, condition]) -> (v', h')``, all ``(B, C, h, w)``.

    Split in two halves so that sampling can run the vertical stack once per row: the vertical
    pre-activation at row ``i`` depends on rows above ``i`` only.
    """

    def __init__(self, channels: int, kernel: int, *, first: bool, condition_channels: int) -> None:
        super().__init__()
        self.vertical = MaskedConv2d(channels, 2 * channels, kernel, stack="vertical", include_centre=not first)
        self.horizontal = MaskedConv2d(channels, 2 * channels, kernel, stack="horizontal", include_centre=not first)
        self.vertical_to_horizontal = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.horizontal_out = nn.Conv2d(channels, channels, 1)
        self.condition = nn.Conv2d(condition_channels, 4 * channels, 1) if condition_channels else None
        self.residual = not first

    def split_condition(self, condition: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """This layer's conditioning terms ``(for v, for h)``, each ``(B, 2C, h, w)``; Nones when unconditional."""
        if self.condition is None:
            return None, None
        v_cond, h_cond = self.condition(condition).chunk(2, dim=1)
        return v_cond, h_cond

    def vertical_step(self, v: torch.Tensor, v_cond: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pre-activation (B, 2C, h, w), output (B, C, h, w))`` of the vertical stack."""
        v_pre = self.vertical(v)
        return v_pre, _gate(v_pre if v_cond is None else v_pre + v_cond)

    def horizontal_step(self, h: torch.Tensor, v_pre: torch.Tensor, h_cond: torch.Tensor | None) -> torch.Tensor:
        """The horizontal stack's output ``(B, C, h, w)`` from its input and the vertical pre-activation."""
        h_pre = self.horizontal(h) + self.vertical_to_horizontal(v_pre)
        if h_cond is not None:
            h_pre = h_pre + h_cond
        h_out = self.horizontal_out(_gate(h_pre))
        return h_out + h if self.residual else h_out

    def forward(
        self, v: torch.Tensor, h: torch.Tensor, condition: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        v_cond, h_cond = self.split_condition(condition)
        v_pre, v_out = self.vertical_step(v, v_cond)
        return v_out, self.horizontal_step(h, v_pre, h_cond)


class GatedPixelCNN(nn.Module):
    """Autoregressive prior over ``(h, w)`` grids of ``num_codes`` codes (see the module docstring).

    Code grids are int64 ``(B, h, w)``, or ``(B, h, w, stages)`` with ``stages > 1`` (the modelled grid
    and the conditioning grid alike).

    Args:
        num_codes: ``K``, the codebook size of the modelled grid (of each stage's codebook).
        channels: ``C``, the width of every layer.
        layers: number of gated layers, ``>= 1``.
        condition_codes: codebook size of the conditioning grid; 0 for an unconditional prior.
        stages: ``Q``, the codes per position (the module docstring's stages); 1 for one code.
    """

    def __init__(
        self, num_codes: int, *, channels: int = 64, layers: int = 8, condition_codes: int = 0, stages: int = 1
    ) -> None:
        super().__init__()
        for name, value, low in (("num_codes", num_codes, 1), ("channels", channels, 1), ("layers", layers, 1),
                                 ("condition_codes", condition_codes, 0), ("stages", stages, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        self.num_codes = num_codes
        self.condition_codes = condition_codes
        self.stages = stages
        self.embedding = _StageEmbedding(num_codes, channels, stages)
        self.condition_net = None
        if condition_codes:
            self.condition_net = nn.Sequential(
                _StageEmbedding(condition_codes, channels, stages),
                _ChannelsFirst(),
                nn.Conv2d(channels, channels, 3, padding=1),
                nn.ReLU(),
            )
        self.stage_embedding = nn.Embedding(stages, channels) if stages > 1 else None
        conditioned = bool(condition_codes) or stages > 1
        self.layers = nn.ModuleList(
            _GatedLayer(channels, FIRST_KERNEL if i == 0 else KERNEL, first=i == 0,
                        condition_channels=channels if conditioned else 0)
            for i in range(layers)
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU(), nn.Conv2d(channels, num_codes, 1))

    def _check_codes(self, codes: object, name: str) -> torch.Tensor:
        """``codes`` if it is an int64 grid ``(B, h, w)`` (``(B, h, w, stages)`` with stages); else a
        ValueError naming ``name``."""
        shape = "(B, h, w)" if self.stages == 1 else f"(B, h, w, {self.stages})"
        dims = 3 if self.stages == 1 else 4
        if (not isinstance(codes, torch.Tensor) or codes.dtype != torch.int64 or codes.dim() != dims
                or (self.stages > 1 and codes.shape[-1] != self.stages)):
            raise ValueError(f"{name} must be an int64 tensor {shape}, got {getattr(codes, 'dtype', type(codes))} "
                             f"of shape {tuple(getattr(codes, 'shape', ()))}")
        return codes

    def condition_map(self, condition: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor | None:
        """The conditioning feature map ``(B, C, h, w Q)`` of the code grid ``condition (B, h', w'[, Q])``
        for a modelled grid of ``size = (h, w)`` positions, plus (``stages = Q > 1``) the stage map of
        its columns; None for an unconditional prior of one stage. An unconditional prior must get
        ``condition=None``; with stages alone the map has a batch dim of 1."""
        if self.condition_net is None:
            if condition is not None:
                raise ValueError("this prior is unconditional: condition must be None")
            features = None
        else:
            if condition is None:
                raise ValueError("this prior is conditional: pass the conditioning codes (B, h', w')")
            condition = self._check_codes(condition, "condition")
            features = F.interpolate(self.condition_net(condition), size=size, mode="nearest")
            features = features.repeat_interleave(self.stages, dim=-1) if self.stages > 1 else features
        if self.stage_embedding is None:
            return features
        height, width = size
        stages = self.stage_embedding.weight.T.repeat(1, width)  # (C, w Q): column c is stage c % Q
        stages = stages[None, :, None, :].expand(1, -1, height, -1)
        return stages if features is None else features + stages

    def logits(self, codes: torch.Tensor, condition_map: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, K, h, W)`` of every position of the raster ``codes (B, h, W)`` (``W = w Q``) given
        the codes before it (and ``condition_map`` ``(B, C, h, W)`` from :meth:`condition_map`)."""
        v = h = self._embed(codes)
        for layer in self.layers:
            v, h = layer(v, h, condition_map)
        return self.head(h)

    def forward(self, codes: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, K, h, w)`` (``(B, K, h, w, Q)`` with stages) for the int64 code grid ``codes``
        ``(B, h, w)`` (``(B, h, w, Q)``), teacher forcing."""
        codes = self._check_codes(codes, "codes")
        size = codes.shape[1:3]
        logits = self.logits(codes.flatten(2), self.condition_map(condition, size))
        return logits.unflatten(-1, (size[1], self.stages)) if self.stages > 1 else logits

    def nll(self, codes: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """``-log p(codes)`` in nats per grid: the cross-entropy summed over positions (and stages; codes
        ``-1`` are skipped), ``(B,)`` float32."""
        logits = self(codes, condition).float()
        return F.cross_entropy(logits, codes, reduction="none", ignore_index=-1).flatten(1).sum(1)

    def _embed(self, codes: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, W)`` of the raster ``codes (B, h, W)``, whose column ``c`` holds stage ``c % Q``."""
        if self.stages == 1:
            return self.embedding(codes).permute(0, 3, 1, 2)
        stage = torch.arange(codes.shape[-1], device=codes.device) % self.stages
        return self.embedding.rows(codes, stage).permute(0, 3, 1, 2)

    @torch.no_grad()
    def sample(self, n: int, size: tuple[int, int], condition: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` code grids of ``size = (h, w)`` positions drawn in raster order: int64 ``(n, h, w)``, or
        ``(n, h, w, Q)`` with stages (the columns of the ``h x w Q`` raster, stage by stage).

        ``h w Q`` sequential draws from the softmax of the logits (:func:`torch.multinomial`, the global
        generator, so ``torch.manual_seed`` repeats a draw), computed exactly as :meth:`forward` would
        but without its waste: the vertical stacks run once per row (on the rows so far; at row
        ``i`` they depend only on the rows above), the horizontal stacks and the head once per
        position, on that row's positions up to it.
        """
        height, positions = size
        width = positions * self.stages
        codes = torch.zeros(n, height, width, dtype=torch.int64, device=self.embedding.weight.device)
        condition_map = self.condition_map(condition, (height, positions))
        conditions = [layer.split_condition(condition_map) for layer in self.layers]
        for i in range(height):
            v = self._embed(codes[:, : i + 1])
            row_pre = []
            for layer, (v_cond, _) in zip(self.layers, conditions):
                v_pre, v = layer.vertical_step(v, None if v_cond is None else v_cond[:, :, : i + 1])
                row_pre.append(v_pre[:, :, i : i + 1])
            for j in range(width):
                h = self._embed(codes[:, i : i + 1, : j + 1])
                for layer, v_pre, (_, h_cond) in zip(self.layers, row_pre, conditions):
                    h = layer.horizontal_step(
                        h, v_pre[..., : j + 1], None if h_cond is None else h_cond[:, :, i : i + 1, : j + 1]
                    )
                logits = self.head(h[..., j:]).flatten(1).float()
                codes[:, i, j] = torch.multinomial(logits.softmax(dim=-1), 1).squeeze(1)
        return codes.unflatten(-1, (positions, self.stages)) if self.stages > 1 else codes
