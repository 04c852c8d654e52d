"""Encoders and decoders shared by the zoo, sized from the data's shape.

* Images ``(C, H, W)``: :class:`ConvEncoder` / :class:`ConvDecoder`, the architecture of Higgins et
  al. / Burgess et al. for 64 x 64 dSprites: 4 x 4 convolutions of stride 2 (32, 32, 64, 64 channels)
  halving the side down to about 4, then a 256-unit hidden layer. Smaller images use fewer
  downsampling layers (the side never goes below 4 before flattening); the decoder mirrors the exact
  side lengths, so odd sizes (28 x 28) round-trip.
* Flat vectors ``(D,)``: :class:`MLP` encoders and decoders (two 512-unit hidden layers).
* Spatial feature maps for VQ models: :class:`FeatureEncoder` / :class:`FeatureDecoder`, strided
  convolutions plus residual blocks as in the VQ-VAE paper (van den Oord et al. 2017, section 4.1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = [
    "MLP",
    "ConvDecoder",
    "ConvEncoder",
    "FeatureDecoder",
    "FeatureEncoder",
    "ResidualStack",
    "build_decoder",
    "build_encoder",
    "downsampled_sides",
]

#: Channels of the image encoder's strided convolutions (Burgess et al. 2018, appendix A.1).
CONV_CHANNELS: tuple[int, ...] = (32, 32, 64, 64)
#: Width of the hidden fully-connected layer after the convolutions.
CONV_HIDDEN = 256
#: Hidden widths of the MLPs for flat data.
MLP_HIDDEN: tuple[int, ...] = (512, 512)
#: The image encoder stops halving once a side would drop below this.
MIN_SIDE = 4


def downsampled_sides(height: int, width: int, max_layers: int) -> list[tuple[int, int]]:
    """Spatial sizes after each stride-2 layer (kernel 4, padding 1 halves, flooring), starting with
    the input's, for as many layers (at most ``max_layers``) as keep both sides ``>= MIN_SIDE``."""
    sides = [(height, width)]
    while len(sides) <= max_layers and min(sides[-1]) // 2 >= MIN_SIDE:
        h, w = sides[-1]
        sides.append((h // 2, w // 2))
    return sides


class MLP(nn.Sequential):
    """``Linear -> ReLU`` per hidden width, then a final ``Linear``: ``(B, inputs) -> (B, outputs)``."""

    def __init__(self, inputs: int, outputs: int, hidden: Sequence[int] = MLP_HIDDEN) -> None:
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(inputs, width), nn.ReLU()]
            inputs = width
        layers.append(nn.Linear(inputs, outputs))
        super().__init__(*layers)


class ConvEncoder(nn.Module):
    """Image encoder: ``(B, C, H, W) -> (B, out_features)``.

    Stride-2 4 x 4 convolutions with ReLU (``channels``, as many as ``downsampled_sides`` allows),
    flatten, ``Linear(hidden) -> ReLU -> Linear(out_features)``.
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        out_features: int,
        *,
        channels: Sequence[int] = CONV_CHANNELS,
        hidden: int = CONV_HIDDEN,
    ) -> None:
        super().__init__()
        in_channels, height, width = input_shape
        self.sides = downsampled_sides(height, width, len(channels))
        layers: list[nn.Module] = []
        for out_channels in channels[: len(self.sides) - 1]:
            layers += [nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1), nn.ReLU()]
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        h, w = self.sides[-1]
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * h * w, hidden), nn.ReLU(), nn.Linear(hidden, out_features))
        self.feature_shape = (in_channels, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, C, H, W)`` -> ``(B, out_features)``."""
        return self.head(self.features(x))


class ConvDecoder(nn.Module):
    """Image decoder mirroring :class:`ConvEncoder`: ``(B, in_features) -> (B, C, H, W)`` (no output
    activation: the model applies its observation model)."""

    def __init__(
        self,
        in_features: int,
        output_shape: tuple[int, int, int],
        *,
        channels: Sequence[int] = CONV_CHANNELS,
        hidden: int = CONV_HIDDEN,
    ) -> None:
        super().__init__()
        out_channels, height, width = output_shape
        sides = downsampled_sides(height, width, len(channels))
        widths = list(channels[: len(sides) - 1])
        h, w = sides[-1]
        first = widths[-1] if widths else out_channels
        # Images too small to downsample come straight out of the linear head, with no activation.
        head: list[nn.Module] = [nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, first * h * w)]
        if widths:
            head.append(nn.ReLU())
        self.head = nn.Sequential(*head, nn.Unflatten(1, (first, h, w)))
        layers: list[nn.Module] = []
        # Up-convolutions undo the encoder's halvings in reverse; output_padding restores odd sides.
        targets = sides[:-1][::-1]
        ins = widths[::-1]
        outs = widths[::-1][1:] + [out_channels]
        for i, ((th, tw), c_in, c_out) in enumerate(zip(targets, ins, outs)):
            h, w = (h, w) if i == 0 else sides[len(sides) - 1 - i]
            padding = (th - 2 * h, tw - 2 * w)
            layers.append(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, output_padding=padding))
            if i < len(targets) - 1:
                layers.append(nn.ReLU())
        if not layers:
            layers.append(nn.Identity())
        self.features = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``z (B, in_features)`` -> ``(B, C, H, W)``."""
        return self.features(self.head(z))


class _Reshape(nn.Module):
    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)


def build_encoder(input_shape: tuple[int, ...], out_features: int) -> nn.Module:
    """The shared encoder for data of shape ``input_shape``: ``(B, *input_shape) -> (B, out_features)``."""
    if len(input_shape) == 3:
        return ConvEncoder(input_shape, out_features)  # type: ignore[arg-type]
    if len(input_shape) == 1:
        return MLP(input_shape[0], out_features)
    raise ValueError(f"input_shape must be (C, H, W) or (D,), got {input_shape!r}")


def build_decoder(in_features: int, output_shape: tuple[int, ...]) -> nn.Module:
    """The shared decoder producing ``(B, *output_shape)`` from ``(B, in_features)``."""
    if len(output_shape) == 3:
        return ConvDecoder(in_features, output_shape)  # type: ignore[arg-type]
    if len(output_shape) == 1:
        return nn.Sequential(MLP(in_features, output_shape[0], MLP_HIDDEN[::-1]), _Reshape(output_shape))
    raise ValueError(f"output_shape must be (C, H, W) or (D,), got {output_shape!r}")


class ResidualStack(nn.Module):
    """``blocks`` residual blocks ``x + Conv1x1(ReLU(Conv3x3(ReLU(x))))`` and a final ReLU (VQ-VAE,
    section 4.1): ``(B, channels, H, W) -> (B, channels, H, W)``."""

    def __init__(self, channels: int, hidden: int, blocks: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.ReLU(), nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, channels, 1))
            for _ in range(blocks)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the blocks; shape preserved."""
        for block in self.blocks:
            x = x + block(x)
        return torch.relu(x)


class FeatureEncoder(nn.Module):
    """Spatial encoder for VQ models: ``(B, C_in, H, W) -> (B, C_out, H / 2^downsamples, W / 2^downsamples)``.

    ``downsamples`` stride-2 4 x 4 convolutions (``hidden`` channels), a 3 x 3 convolution, a
    :class:`ResidualStack`, and a 1 x 1 projection to ``out_channels``. Sides must be divisible by
    ``2^downsamples``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, hidden: int = 128, downsamples: int = 2, res_blocks: int = 2,
        res_hidden: int = 32,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for i in range(downsamples):
            width = hidden // 2 if i < downsamples - 1 else hidden
            layers += [nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.ReLU()]
            channels = width
        layers += [nn.Conv2d(channels, hidden, 3, padding=1), ResidualStack(hidden, res_hidden, res_blocks)]
        layers.append(nn.Conv2d(hidden, out_channels, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, C_in, H, W)`` -> ``(B, C_out, H', W')``."""
        return self.net(x)


class FeatureDecoder(nn.Module):
    """Spatial decoder for VQ models, the mirror of :class:`FeatureEncoder`:
    ``(B, C_in, h, w) -> (B, C_out, h * 2^upsamples, w * 2^upsamples)`` (no output activation)."""

    def __init__(
        self, in_channels: int, out_channels: int, *, hidden: int = 128, upsamples: int = 2, res_blocks: int = 2,
        res_hidden: int = 32,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, hidden, 3, padding=1), ResidualStack(hidden, res_hidden, res_blocks)]
        channels = hidden
        for i in range(upsamples):
            last = i == upsamples - 1
            width = out_channels if last else hidden // 2
            layers.append(nn.ConvTranspose2d(channels, width, 4, stride=2, padding=1))
            if not last:
                layers.append(nn.ReLU())
            channels = width
        if upsamples == 0:
            layers.append(nn.Conv2d(channels, out_channels, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, C_in, h, w)`` -> ``(B, C_out, H, W)``."""
        return self.net(x)
