"""The interface every zoo model shares: :class:`ModelOutput`, :class:`VAEModel`, and
:class:`GaussianVAE`, the base of the Gaussian-latent family.

Loss scale (DESIGN.md): reconstruction is ``-log p(x|z)`` summed over pixels and the KL is summed
over latent dimensions, both averaged over the batch, so a weight named beta means beta.

Observation models (the ``likelihood`` hyper-parameter):

``"bernoulli"``
    The decoder outputs logits; ``-log p(x|z)`` is the binary cross-entropy with logits, summed over
    pixels (x in [0, 1]). ``recon`` is ``sigmoid(logits)``. The default: dSprites is binary.
``"gaussian"``
    The decoder outputs the mean; ``-log p(x|z) = -log N(x; mean, obs_std^2 I)`` summed over pixels,
    with its normalising constant (through :func:`fastvae.gaussian_log_prob`). ``recon`` is the mean.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fastvae import ops
from fastvae.models.nets import build_decoder, build_encoder

__all__ = ["LIKELIHOODS", "GaussianVAE", "ModelOutput", "ObservationModel", "VAEModel"]

#: Values of the ``likelihood`` hyper-parameter.
LIKELIHOODS: tuple[str, ...] = ("bernoulli", "gaussian")


class ModelOutput(dict):
    """What a model's ``forward`` returns: a dict with attribute access.

    Always holds ``recon`` (the reconstruction in data space, ``(B, *input_shape)``) and ``z`` (the
    latent sample or code the decoder used). Models add their own entries (``logits``, ``mu``,
    ``logvar``, ``kl``, ``indices``...), documented in each model's docstring.
    """

    def __init__(self, *, recon: torch.Tensor, z: torch.Tensor, **entries: Any) -> None:
        super().__init__(recon=recon, z=z, **entries)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"ModelOutput has no entry {name!r}; it has {', '.join(self)}") from None


def check_likelihood(likelihood: str, obs_std: float) -> None:
    """Validate the observation-model hyper-parameters (ValueError naming the bad one)."""
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {', '.join(map(repr, LIKELIHOODS))}, got {likelihood!r}")
    if not (isinstance(obs_std, (int, float)) and obs_std > 0 and math.isfinite(obs_std)):
        raise ValueError(f"obs_std must be a positive finite number, got {obs_std!r}")


class VAEModel(nn.Module):
    """Base class of every model in the zoo.

    Subclasses are built by :func:`fastvae.models.create` as ``cls(input_shape, latent_dim, **hparams)``
    and implement:

    * ``forward(x, y=None) -> ModelOutput`` with at least ``recon`` and ``z``;
    * ``loss(x, out, y=None, step=None) -> dict[str, Tensor]``: scalars, ``"loss"`` (what to minimise)
      and every named term; ``step`` is the training step (0-based) for schedules, which count training
      steps only; ``None`` means "after every schedule has finished";
    * ``sample(n, y=None) -> Tensor (n, *input_shape)`` in data space;
    * ``reconstruct(x, y=None) -> Tensor (B, *input_shape)`` in data space.

    Models with a discriminator set ``has_discriminator = True``, return ``"disc_loss"`` from ``loss``
    and implement :meth:`discriminator_parameters`: the trainer then runs two optimisers, back-propagating
    ``"loss"`` into every other parameter and ``"disc_loss"`` into the discriminator's only. Models with
    a tractable posterior implement ``log_likelihood(x, k, y=None) -> (B,)``, an importance-sampled
    estimate of ``log p(x)`` through :func:`fastvae.iwae_log_weights` and :func:`fastvae.iwae_bound`.

    Attributes:
        name: the registry name (set by :func:`fastvae.models.register`).
        input_shape: one example's shape, ``(C, H, W)`` or ``(D,)``.
        latent_dim: the latent size.
        config: ``{"name", "input_shape", "latent_dim", "hparams"}`` (set by ``create``), enough to
            rebuild the model; checkpoints store it.
    """

    name: ClassVar[str] = ""
    has_discriminator: ClassVar[bool] = False
    #: Whether the model takes labels ``y`` (class indices, ``(B,)`` int64); such models need the
    #: ``num_classes`` hyper-parameter.
    conditional: ClassVar[bool] = False

    def __init__(self, input_shape: tuple[int, ...], latent_dim: int) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.latent_dim = latent_dim
        self.config: dict[str, Any] = {}

    def discriminator_parameters(self) -> Iterator[nn.Parameter]:
        """The discriminator's parameters (models with ``has_discriminator``), trained on ``"disc_loss"``."""
        raise NotImplementedError(f"model {self.name!r} has no discriminator")

    def generator_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter not in :meth:`discriminator_parameters`: what ``"loss"`` trains."""
        if not self.has_discriminator:
            yield from self.parameters()
            return
        excluded = {id(p) for p in self.discriminator_parameters()}
        yield from (p for p in self.parameters() if id(p) not in excluded)

    @property
    def device(self) -> torch.device:
        """The device of the model's first parameter or buffer (CPU for a model with neither)."""
        for tensor in (*self.parameters(), *self.buffers()):
            return tensor.device
        return torch.device("cpu")

    def check_input(self, x: object, name: str = "x") -> torch.Tensor:
        """``x`` as a float tensor of shape ``(B, *input_shape)``; TypeError/ValueError naming ``name``."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
        if x.dim() != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"{name} must have shape (B, {', '.join(map(str, self.input_shape))}) for this model, "
                f"got {tuple(x.shape)}"
            )
        return x

    def check_labels(self, y: object, batch: int, num_classes: int) -> torch.Tensor:
        """``y`` as int64 class indices ``(batch,)`` in ``[0, num_classes)``; errors name ``y``."""
        if y is None:
            raise ValueError(f"model {self.name!r} is conditional: pass labels y of shape ({batch},)")
        if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.shape != (batch,):
            raise ValueError(f"y must be an integer tensor of shape ({batch},), got {getattr(y, 'shape', y)!r}")
        return y.long()


class ObservationModel(VAEModel):
    """A :class:`VAEModel` whose decoder parameterises one of the observation models p(x|z) of the module
    docstring: the ``likelihood`` and ``obs_std`` hyper-parameters, the decoder output's mean
    (:meth:`mean`, what ``recon`` holds) and ``-log p(x|z)`` (:meth:`reconstruction_nll`).

    Args:
        input_shape: ``(C, H, W)`` or ``(D,)``.
        latent_dim: the latent size.
        likelihood: ``"bernoulli"`` or ``"gaussian"``.
        obs_std: the Gaussian observation model's standard deviation.
    """

    def __init__(
        self, input_shape: tuple[int, ...], latent_dim: int, *, likelihood: str = "bernoulli", obs_std: float = 1.0
    ) -> None:
        super().__init__(input_shape, latent_dim)
        check_likelihood(likelihood, obs_std)
        self.likelihood = likelihood
        self.obs_std = float(obs_std)

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        """The observation model's mean for decoder output ``logits``: what ``recon`` holds."""
        return torch.sigmoid(logits) if self.likelihood == "bernoulli" else logits

    def reconstruction_nll(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``-log p(x|z)`` summed over every non-batch dim: ``(..., *input_shape) -> (...)`` (float32)."""
        x = x.expand_as(logits)
        if self.likelihood == "bernoulli":
            nll = F.binary_cross_entropy_with_logits(logits.float(), x.float(), reduction="none")
            return nll.flatten(-len(self.input_shape)).sum(-1)
        flat_x = x.float().flatten(-len(self.input_shape))
        logvar = torch.full_like(flat_x, 2.0 * math.log(self.obs_std))
        return -ops.gaussian_log_prob(flat_x, logits.float().flatten(-len(self.input_shape)), logvar)


class GaussianVAE(ObservationModel):
    """A VAE with a diagonal-Gaussian posterior ``q(z|x) = N(mu, diag(e^logvar))`` and prior N(0, I).

    The base of the Gaussian-latent zoo. Encoder and decoder are the shared networks of
    :mod:`fastvae.models.nets`, sized from ``input_shape``. ``forward`` samples ``z`` and the KL in
    one fused op (:func:`fastvae.reparameterize_kl`) and returns ``ModelOutput(recon, z, logits, mu,
    logvar, kl)`` with ``kl (B,)`` the per-example KL summed over latent dims and ``logits`` the
    decoder's raw output. The default loss is the negative ELBO,
    ``loss = mean_b[-log p(x_b|z_b)] + mean_b[KL_b]``; subclasses override :meth:`loss`.

    Args:
        input_shape: ``(C, H, W)`` or ``(D,)``.
        latent_dim: size of ``z``.
        likelihood: ``"bernoulli"`` or ``"gaussian"`` (see the module docstring).
        obs_std: the Gaussian observation model's standard deviation.
    """

    def __init__(
        self, input_shape: tuple[int, ...], latent_dim: int, *, likelihood: str = "bernoulli", obs_std: float = 1.0
    ) -> None:
        super().__init__(input_shape, latent_dim, likelihood=likelihood, obs_std=obs_std)
        self.encoder = build_encoder(self.input_shape, 2 * latent_dim)
        self.decoder = build_decoder(latent_dim, self.input_shape)

    # --- the pieces subclasses reuse ------------------------------------------------------------------

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters ``(mu, logvar)``, each ``(B, latent_dim)``."""
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return mu, logvar

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder output (logits for Bernoulli, the mean for Gaussian), ``(B, *input_shape)``."""
        return self.decoder(z)

    def prior_sample(self, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` draws from the prior p(z), ``(n, latent_dim)``."""
        return torch.randn(n, self.latent_dim, device=self.device)

    # --- the model interface --------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> ModelOutput:
        """Encode, sample ``z`` with its KL (fused), decode. ``x (B, *input_shape)``."""
        x = self.check_input(x)
        mu, logvar = self.encode(x, y)
        z, kl = ops.reparameterize_kl(mu, logvar)
        logits = self.decode(z, y)
        return ModelOutput(recon=self.mean(logits), z=z, logits=logits, mu=mu, logvar=logvar, kl=kl)

    def loss(
        self, x: torch.Tensor, out: ModelOutput, y: torch.Tensor | None = None, step: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Negative ELBO: ``{"loss": recon + kl, "recon", "kl"}``, each a batch mean of per-example sums."""
        recon = self.reconstruction_nll(x, out.logits).mean()
        kl = out.kl.float().mean()
        return {"loss": recon + kl, "recon": recon, "kl": kl}

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` samples in data space (the observation model's mean), ``(n, *input_shape)``."""
        return self.mean(self.decode(self.prior_sample(n, y), y))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstructions from the posterior mean, ``(B, *input_shape)`` in data space."""
        x = self.check_input(x)
        mu, _ = self.encode(x, y)
        return self.mean(self.decode(mu, y))

    @torch.no_grad()
    def elbo(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The evidence lower bound per example, ``(B,)`` float32, with one posterior sample."""
        out = self.forward(x, y)
        return -(self.reconstruction_nll(x, out.logits) + out.kl.float())

    @torch.no_grad()
    def log_likelihood(
        self, x: torch.Tensor, k: int = 100, y: torch.Tensor | None = None, *, chunk: int = 50
    ) -> torch.Tensor:
        """Importance-sampled ``log p(x)`` with ``k`` posterior samples (Burda et al. 2015), ``(B,)``.

        ``log p(x) ~= log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x)``, ``z_i ~ q(z|x)``, through
        :func:`fastvae.iwae_log_weights` and :func:`fastvae.iwae_bound`; samples are drawn ``chunk`` at
        a time, so memory does not grow with ``k``.
        """
        x = self.check_input(x)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        mu, logvar = self.encode(x, y)
        log_w = []
        for start in range(0, k, chunk):
            m = min(chunk, k - start)
            z = ops.reparameterize(mu.expand(m, *mu.shape), logvar.expand(m, *logvar.shape))
            y_rep = None if y is None else y.repeat(m)
            logits = self.decode(z.reshape(-1, self.latent_dim), y_rep).reshape(m, *x.shape)
            log_px_z = -self.reconstruction_nll(x, logits)
            log_w.append(ops.iwae_log_weights(log_px_z, z.float(), mu.float(), logvar.float()))
        return ops.iwae_bound(torch.cat(log_w), dim=0)
