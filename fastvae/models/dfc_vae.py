"""``dfc_vae``: the deep feature consistent VAE (Hou et al. 2017): a feature perceptual loss."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fastvae.models.base import GaussianVAE, ModelOutput
from fastvae.models.registry import register

__all__ = ["DFCVAE", "VGG19_LAYERS", "FeatureNet", "LayerFeatures", "RandomConvFeatures"]

#: What ``feature_net`` accepts: a module or callable mapping images to feature maps, or a name.
FeatureNet = nn.Module | Callable[[torch.Tensor], torch.Tensor | Sequence[torch.Tensor]] | str

#: Indices, in ``torchvision.models.vgg19().features``, of the ReLU outputs the paper uses: its
#: VAE-123 takes relu1_1, relu2_1, relu3_1; VAE-345 takes relu3_1, relu4_1, relu5_1.
VGG19_LAYERS: dict[str, int] = {"relu1_1": 1, "relu2_1": 6, "relu3_1": 11, "relu4_1": 20, "relu5_1": 29}

#: Names ``feature_net`` accepts.
FEATURE_NET_NAMES: tuple[str, ...] = ("random-conv",)

_MISSING_FEATURE_NET = (
    "dfc_vae needs a feature network: pass feature_net=<an nn.Module or callable mapping images "
    "(B, C, H, W) in [0, 1] to a list of feature maps> (the paper uses relu1_1, relu2_1, relu3_1 of an "
    "ImageNet-trained VGG-19, e.g. LayerFeatures(vgg19(weights=...).features, [1, 6, 11]); no weights can "
    "be downloaded here), or feature_net='random-conv' (command line: --feature-net random-conv) for a "
    "fixed randomly initialised conv net (NOT the paper's VGG)"
)


class LayerFeatures(nn.Module):
    """The outputs of chosen layers of a sequential network: ``(B, ...) -> [feature map per layer]``.

    Runs ``layers`` up to the last chosen index only. Wrap e.g. a VGG-19's ``features`` with
    ``[VGG19_LAYERS[n] for n in ("relu1_1", "relu2_1", "relu3_1")]`` (the input then has to be what
    that network expects: 3 channels, ImageNet normalisation; map the data to it in ``transform``).

    Args:
        layers: the network, run in order.
        indices: increasing indices into ``layers`` whose outputs are returned.
        transform: optional map applied to the input first (channel replication, normalisation).
    """

    def __init__(
        self, layers: nn.Sequential, indices: Sequence[int], transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> None:
        super().__init__()
        indices = list(indices)
        if not indices or indices != sorted(set(indices)) or indices[0] < 0 or indices[-1] >= len(layers):
            raise ValueError(f"indices must be increasing layer indices in [0, {len(layers)}), got {indices!r}")
        self.layers = layers[: indices[-1] + 1]
        self.indices = indices
        self.transform = transform

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``x`` -> the chosen layers' outputs, in order."""
        if self.transform is not None:
            x = self.transform(x)
        features = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in self.indices:
                features.append(x)
        return features


class RandomConvFeatures(nn.Module):
    """A fixed, randomly initialised VGG-like feature net: NOT the paper's ImageNet-trained VGG-19.

    Three 3 x 3 convolutions (padding 1; ``widths`` 16, 32, 64 channels), each followed by a ReLU
    whose output is a feature map, with 2 x 2 max-pooling between them: the positions of VGG's
    relu1_1, relu2_1 and relu3_1. Weights are He-normal (fan-in), biases zero, drawn from a generator
    seeded with ``seed``, so the same seed always gives the same net. They are non-persistent
    buffers: no parameters (nothing to train or to optimise) and nothing in the ``state_dict``.

    ``(B, C, H, W) -> [(B, 16, H, W), (B, 32, H/2, W/2), (B, 64, H/4, W/4)]``.
    """

    widths: tuple[int, ...] = (16, 32, 64)

    def __init__(self, in_channels: int, *, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        channels = in_channels
        for i, width in enumerate(self.widths):
            std = math.sqrt(2.0 / (channels * 9))
            self.register_buffer(
                f"weight{i}", torch.randn(width, channels, 3, 3, generator=generator) * std, persistent=False
            )
            self.register_buffer(f"bias{i}", torch.zeros(width), persistent=False)
            channels = width

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``x (B, C, H, W)`` -> three feature maps (class docstring)."""
        features = []
        for i in range(len(self.widths)):
            if i:
                x = F.max_pool2d(x, 2)
            x = F.relu(F.conv2d(x, getattr(self, f"weight{i}"), getattr(self, f"bias{i}"), padding=1))
            features.append(x)
        return features


@register("dfc_vae")
class DFCVAE(GaussianVAE):
    """Hou, Shen, Sun & Qiu, "Deep Feature Consistent Variational Autoencoder" (WACV 2017).

    The pixel-wise reconstruction loss is replaced by a feature perceptual loss: the squared
    difference between the hidden features ``Phi_l`` of a fixed, given network for the input ``x``
    and for the reconstruction ``x_hat = sigmoid(decoder(z))`` (``out.recon``, in (0, 1) like the
    data), with one reparameterised ``z ~ q(z|x)`` per example. The loss, as implemented (the seed
    table's formula)::

        L_rec^l(x_b) = 1 / (2 C_l H_l W_l) * sum_{c,h,w} (Phi_l(x_b) - Phi_l(x_hat_b))_{c,h,w}^2
        recon = mean_b [ sum_l L_rec^l(x_b) ]
        kl    = mean_b [ KL(q(z|x_b) || N(0, I)) ]          (summed over latent dims, closed form)
        loss  = alpha * recon + beta * kl

    (``C_l H_l W_l`` is the size of one example's ``l``-th feature map, whatever its shape.) There is
    no pixel-space term: the paper's loss has none (some public implementations add an MSE). The
    paper writes ``L_total = alpha * L_kl + beta * sum_l L_rec^l`` with ``alpha = 1, beta = 0.5``: its
    names are the other way round from the seed table's. Here ``alpha`` weighs the perceptual term and
    ``beta`` the KL (as in a beta-VAE), so the paper's setting is ``alpha = 0.5, beta = 1`` (the
    defaults). Its features are relu1_1, relu2_1, relu3_1 of an ImageNet-trained VGG-19 (VAE-123).

    The feature network is frozen: its parameters get ``requires_grad = False`` (the module passed
    in is changed in place), it stays in eval mode whatever ``train()`` says, and
    :meth:`generator_parameters` leaves it out, so the trainer's optimiser never sees it. Gradients
    still flow through it to the reconstruction. ``Phi(x)`` of the data is computed without a graph.

    No pre-trained weights can be downloaded on these machines (torchvision's VGG-19 weights are
    unavailable), so there is no default network: without ``feature_net`` the constructor raises a
    ValueError saying what to pass. ``feature_net="random-conv"`` is an explicit, documented
    fallback, :class:`RandomConvFeatures` (a fixed random VGG-like net): not the paper's features.

    ``elbo`` and ``log_likelihood`` (inherited) read the sigmoid outputs as Bernoulli means; the
    model is not trained on that likelihood, so they are diagnostics only.

    Args:
        input_shape: ``(C, H, W)`` (or ``(D,)`` with a ``feature_net`` that takes flat vectors).
        latent_dim: size of ``z``.
        feature_net: an ``nn.Module`` (registered as a frozen submodule, moved with the model) or a
            plain callable (kept as is: it must handle the model's device itself) mapping
            ``(B, *input_shape)`` images in [0, 1] to a feature map or a list of them, each
            ``(B, ...)``; or the name ``"random-conv"``. Required (see above).
        alpha: weight of the perceptual term (0.5: the paper's ``beta``).
        beta: weight of the KL term (1: the paper's ``alpha``).
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        latent_dim: int,
        *,
        feature_net: FeatureNet | None = None,
        alpha: float = 0.5,
        beta: float = 1.0,
    ) -> None:
        super().__init__(input_shape, latent_dim)
        for name, value in (("alpha", alpha), ("beta", beta)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ValueError(f"{name} must be a non-negative finite number, got {value!r}")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.feature_fn: Callable[[torch.Tensor], object] | None = None
        self.feature_net: nn.Module | None = None
        if feature_net is None:
            raise ValueError(_MISSING_FEATURE_NET)
        if isinstance(feature_net, str):
            if feature_net not in FEATURE_NET_NAMES:
                raise ValueError(
                    f"feature_net must be a module, a callable or one of {', '.join(map(repr, FEATURE_NET_NAMES))}, "
                    f"got {feature_net!r}"
                )
            if len(self.input_shape) != 3:
                raise ValueError(
                    f"feature_net='random-conv' needs images: input_shape must be (C, H, W), got {self.input_shape!r}"
                )
            feature_net = RandomConvFeatures(self.input_shape[0])
        if isinstance(feature_net, nn.Module):
            feature_net.requires_grad_(False)
            self.feature_net = feature_net.eval()
        elif callable(feature_net):
            self.feature_fn = feature_net
        else:
            raise TypeError(f"feature_net must be an nn.Module, a callable or a name, got {type(feature_net).__name__}")

    def train(self, mode: bool = True) -> DFCVAE:
        """Set training mode for the encoder and decoder; the feature network stays in eval mode."""
        super().train(mode)
        if self.feature_net is not None:
            self.feature_net.eval()
        return self

    def generator_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter except the frozen feature network's: what ``"loss"`` trains."""
        frozen = set() if self.feature_net is None else {id(p) for p in self.feature_net.parameters()}
        yield from (p for p in self.parameters() if id(p) not in frozen)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The feature maps ``Phi_l(images)``: a list of ``(B, ...)`` tensors (float32 or wider)."""
        net = self.feature_net if self.feature_net is not None else self.feature_fn
        output = net(images)
        maps = [output] if isinstance(output, torch.Tensor) else output
        if (
            not isinstance(maps, (list, tuple))
            or not maps
            or not all(isinstance(m, torch.Tensor) and m.dim() >= 1 and m.shape[0] == images.shape[0] for m in maps)
        ):
            raise ValueError(
                "feature_net must return a tensor or a non-empty list of tensors, each with the batch "
                f"({images.shape[0]}) as its first dim, got {type(output).__name__}"
            )
        return [m if m.dtype == torch.float64 else m.float() for m in maps]

    def perceptual(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """``sum_l L_rec^l`` per example (class docstring): ``(B, *input_shape) x 2 -> (B,)``."""
        with torch.no_grad():
            targets = self.features(x)
        predictions = self.features(recon)
        if len(targets) != len(predictions):
            raise ValueError("feature_net returned a different number of feature maps for x and its reconstruction")
        total = recon.new_zeros(recon.shape[0], dtype=torch.float32)
        for target, prediction in zip(targets, predictions):
            size = math.prod(target.shape[1:])
            total = total + (prediction - target).pow(2).flatten(1).sum(1) / (2.0 * size)
        return total

    def loss(
        self, x: torch.Tensor, out: ModelOutput, y: torch.Tensor | None = None, step: int | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"loss": alpha * recon + beta * kl, "recon", "kl"}`` (class docstring), scalars."""
        recon = self.perceptual(x, out.recon).mean()
        kl = out.kl.float().mean()
        return {"loss": self.alpha * recon + self.beta * kl, "recon": recon, "kl": kl}
