"""``cvae``: the conditional VAE (Sohn et al. 2015), with a learned label-conditional Gaussian prior."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fastvae import ops
from fastvae.models.base import GaussianVAE, ModelOutput
from fastvae.models.nets import build_decoder, build_encoder
from fastvae.models.registry import register

__all__ = ["CVAE"]


@register("cvae")
class CVAE(GaussianVAE):
    """Conditional VAE of Sohn, Lee & Yan, "Learning Structured Output Representation using Deep
    Conditional Generative Models" (NeurIPS 2015).

    Every distribution is conditioned on the label ``y`` (class indices, int64 ``(B,)``)::

        q(z|x,y) = N(mu(x,y), diag e^logvar(x,y))        the encoder sees x and one-hot(y)
        p(z|y)   = N(mu_p(y), diag e^logvar_p(y))         the learned prior network
        p(x|z,y)                                          the decoder sees z and one-hot(y)

        recon = mean_b [ -log p(x_b | z_b, y_b) ]                   (summed over pixels; z_b ~ q(z|x_b,y_b))
        kl    = mean_b [ KL(q(z|x_b,y_b) || p(z|y_b)) ]              (summed over latent dims, closed form
                                                                     between two diagonal Gaussians)
        loss  = recon + kl                                          (the negative conditional ELBO of log p(x|y))

    The label enters images as ``num_classes`` constant one-hot channels appended to ``x`` and flat
    data as ``num_classes`` appended features; the decoder takes ``[z, one-hot(y)]``. The prior
    network is a per-class table of ``(mu_p, logvar_p)`` (equivalent to a linear layer on the one-hot
    label, which is any function of a discrete label), initialised to ``N(0, I)``. The KL goes through
    :func:`fastvae.gaussian_kl` with the prior's parameters; ``log_likelihood(x, k, y)`` estimates
    ``log p(x|y)`` by importance sampling with the conditional prior. ``sample(n, y)`` draws
    ``z ~ p(z|y)`` and decodes it.

    ``forward`` returns ``ModelOutput(recon, z, logits, mu, logvar, kl, prior_mu, prior_logvar)``.
    The paper's hybrid objective (adding the Gaussian stochastic network's loss with weight ``alpha``)
    is not included: this is its plain CVAE objective.

    Args:
        input_shape: ``(C, H, W)`` or ``(D,)``.
        latent_dim: size of ``z``.
        num_classes: number of label classes (default 3, the dSprites shapes: the trainer uses the
            shape factor as the label).
        likelihood: ``"bernoulli"`` (default) or ``"gaussian"``.
        obs_std: standard deviation of the Gaussian observation model.
    """

    conditional = True
    #: Whether the decoder is ``p(x|z,y)`` (CVAE) or ``p(x|z)`` (CMMA).
    decoder_takes_label: ClassVar[bool] = True

    def __init__(
        self,
        input_shape: tuple[int, ...],
        latent_dim: int,
        *,
        num_classes: int = 3,
        likelihood: str = "bernoulli",
        obs_std: float = 1.0,
    ) -> None:
        super().__init__(input_shape, latent_dim, likelihood=likelihood, obs_std=obs_std)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = num_classes
        # The shared networks, widened by the one-hot label (replacing GaussianVAE's unconditional ones).
        conditioned = (self.input_shape[0] + num_classes, *self.input_shape[1:])
        self.encoder = build_encoder(conditioned, 2 * latent_dim)
        if self.decoder_takes_label:
            self.decoder = build_decoder(latent_dim + num_classes, self.input_shape)
        self.prior_net = nn.Embedding(num_classes, 2 * latent_dim)
        nn.init.zeros_(self.prior_net.weight)

    # --- the label --------------------------------------------------------------------------------

    def labels(self, y: torch.Tensor | None, batch: int) -> torch.Tensor:
        """``y`` checked and as int64 ``(batch,)`` class indices in ``[0, num_classes)``.

        Raises:
            ValueError: ``y`` missing, of the wrong shape or type, or out of range (naming ``y``).
        """
        y = self.check_labels(y, batch, self.num_classes)
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ValueError(
                f"y must hold class indices in [0, {self.num_classes}), got values in [{int(y.min())}, {int(y.max())}]"
            )
        return y

    def one_hot(self, y: torch.Tensor | None, batch: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Labels ``y`` (int ``(batch,)``) one-hot: ``(batch, num_classes)`` in ``dtype``."""
        return F.one_hot(self.labels(y, batch), self.num_classes).to(dtype)

    # --- the conditional pieces -----------------------------------------------------------------------

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``q(z|x,y)``'s ``(mu, logvar)``, each ``(B, latent_dim)``."""
        label = self.one_hot(y, x.shape[0], x.dtype)
        if len(self.input_shape) == 3:
            label = label[:, :, None, None].expand(-1, -1, *self.input_shape[1:])
        mu, logvar = self.encoder(torch.cat([x, label], dim=1)).chunk(2, dim=-1)
        return mu, logvar

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder output for ``z (B, latent_dim)`` (and ``y`` when the decoder takes the label)."""
        if not self.decoder_takes_label:
            return self.decoder(z)
        return self.decoder(torch.cat([z, self.one_hot(y, z.shape[0], z.dtype)], dim=-1))

    def prior(self, y: torch.Tensor | None, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``p(z|y)``'s ``(mu_p, logvar_p)``, each ``(batch, latent_dim)``."""
        mu_p, logvar_p = self.prior_net(self.labels(y, batch)).chunk(2, dim=-1)
        return mu_p, logvar_p

    def prior_sample(self, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` draws ``z ~ p(z|y_i)``, ``(n, latent_dim)``; ``y`` int ``(n,)`` is required."""
        mu_p, logvar_p = self.prior(y, n)
        return ops.reparameterize(mu_p, logvar_p)

    # --- the model interface --------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> ModelOutput:
        """Encode ``(x, y)``, sample ``z``, KL to ``p(z|y)``, decode. ``x (B, *input_shape)``, ``y (B,)`` int64."""
        x = self.check_input(x)
        mu, logvar = self.encode(x, y)
        mu_p, logvar_p = self.prior(y, x.shape[0])
        z = ops.reparameterize(mu, logvar)
        kl = ops.gaussian_kl(mu, logvar, mu_p, logvar_p)
        logits = self.decode(z, y)
        return ModelOutput(
            recon=self.mean(logits), z=z, logits=logits, mu=mu, logvar=logvar, kl=kl, prior_mu=mu_p, prior_logvar=logvar_p
        )

    @torch.no_grad()
    def log_likelihood(
        self, x: torch.Tensor, k: int = 100, y: torch.Tensor | None = None, *, chunk: int = 50
    ) -> torch.Tensor:
        """Importance-sampled ``log p(x|y)`` with ``k`` samples of ``q(z|x,y)``, ``(B,)`` float32::

            log p(x|y) ~= log (1/k) sum_i p(x|z_i,y) p(z_i|y) / q(z_i|x,y)

        through :func:`fastvae.gaussian_log_prob` and :func:`fastvae.iwae_bound`, ``chunk`` samples at a time.
        """
        x = self.check_input(x)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        y = self.labels(y, x.shape[0])
        mu, logvar = self.encode(x, y)
        mu_p, logvar_p = self.prior(y, x.shape[0])
        mu, logvar, mu_p, logvar_p = mu.float(), logvar.float(), mu_p.float(), logvar_p.float()
        log_w = []
        for start in range(0, k, chunk):
            m = min(chunk, k - start)
            z = ops.reparameterize(mu.expand(m, *mu.shape), logvar.expand(m, *logvar.shape))
            logits = self.decode(z.reshape(-1, self.latent_dim), y.repeat(m)).reshape(m, *x.shape)
            log_px_z = -self.reconstruction_nll(x, logits)
            log_pz = ops.gaussian_log_prob(z, mu_p, logvar_p)
            log_qz = ops.gaussian_log_prob(z, mu, logvar)
            log_w.append(log_px_z + log_pz - log_qz)
        return ops.iwae_bound(torch.cat(log_w), dim=0)
