"""``f_vae``: the VAE whose posterior is a conditional flow of a Gaussian (Su & Wu 2018)."""

from __future__ import annotations

import torch
from torch import nn

from fastvae import ops
from fastvae.ops._checks import check_int
from fastvae.models.base import GaussianVAE, ModelOutput
from fastvae.models.nets import build_encoder
from fastvae.models.registry import register

__all__ = ["FVAE", "ConditionalAffineCoupling"]


class ConditionalAffineCoupling(nn.Module):
    """A RealNVP affine coupling layer conditioned on a context vector ``h`` (an encoding of ``x``).

    With a fixed binary mask ``m`` (``m_i = 1`` for ``i % 2 == parity``)::

        (s, t) = net([m * z, h]),  s = (1 - m) * tanh(s_raw),  t = (1 - m) * t_raw
        z'     = m * z + (1 - m) * (z * exp(s) + t)
        log |det dz'/dz| = sum_i s_i

    The masked half passes through unchanged and parameterises the affine map of the other half,
    so the Jacobian is triangular. ``tanh`` bounds each layer's log-scale to ``(-1, 1)`` (RealNVP's
    scale non-linearity). The last linear layer starts at zero, so a fresh layer is the identity
    (Glow's initialisation).

    Args:
        dim: size of ``z`` (at least 2).
        context_dim: size of ``h``.
        hidden: width of the two hidden ReLU layers of ``net``.
        parity: 0 or 1, which half the mask keeps.
    """

    def __init__(self, dim: int, context_dim: int, hidden: int, parity: int) -> None:
        super().__init__()
        self.register_buffer("mask", (torch.arange(dim) % 2 == parity).float(), persistent=False)
        self.net = nn.Sequential(
            nn.Linear(dim + context_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2 * dim)
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def _scale_shift(self, kept: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s_raw, t_raw = self.net(torch.cat([kept, context.to(kept.dtype)], dim=-1)).chunk(2, dim=-1)
        free = 1.0 - self.mask.to(kept.dtype)
        return free * torch.tanh(s_raw), free * t_raw

    def forward(self, z: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z (B, dim)``, ``context (B, context_dim)`` -> ``(z' (B, dim), log|det dz'/dz| (B,))``."""
        mask = self.mask.to(z.dtype)
        s, t = self._scale_shift(mask * z, context)
        return mask * z + (1.0 - mask) * (z * torch.exp(s) + t), s.sum(-1)

    def inverse(self, z: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The inverse map: ``z' (B, dim)`` -> ``z (B, dim)`` with ``forward(z)[0] == z'``."""
        mask = self.mask.to(z.dtype)
        s, t = self._scale_shift(mask * z, context)
        return mask * z + (1.0 - mask) * (z - t) * torch.exp(-s)


@register("f_vae")
class FVAE(GaussianVAE):
    """f-VAE of Su & Wu, "f-VAEs: Improve VAEs with Conditional Flows" (arXiv 1809.05861, 2018).

    The posterior is the push-forward of a fixed noise ``q(u) = N(0, I)`` through a flow conditioned
    on ``x``, ``q(z|x) = integral delta(z - F_x(u)) q(u) du``. Here ``F_x`` is::

        z_0 = mu(x) + exp(logvar(x) / 2) * u                   (a conditional elementwise affine map)
        z_k = C_k(z_{k-1}; h(x)),  k = 1..num_flows           (conditional affine couplings, masks alternating)
        F_x(u) = z_K,  log|det dF_x/du| = sum_D logvar / 2 + sum_k sum_i s_k,i

    ``(mu, logvar, h)`` come from one shared encoder (``2 * latent_dim + context_dim`` outputs); each
    coupling :class:`ConditionalAffineCoupling` sees ``h``. With ``num_flows = 0`` the model is the
    plain VAE (the paper's remark that the VAE is the f-VAE with an affine ``F_x``). The loss is the
    seed table's, with one sample ``u ~ N(0, I)`` per example::

        recon   = mean_b [ -log p(x_b | F_x_b(u_b)) ]                                   (summed over pixels)
        kl      = mean_b [ log q(u_b) - log|det dF_x_b/du (u_b)| - log p(F_x_b(u_b)) ]  (summed over latent dims)
        loss    = recon + kl
        log_det = mean_b [ log|det dF_x_b/du (u_b)| ]                                   (reported, inside kl)

    ``kl`` is the single-sample estimate of ``KL(q(z|x) || p(z))`` (``log q(z|x) = log q(u) - log|det|``
    by the change of variables), i.e. the table's ``-log|det| + KL[q(u) || p(F_x(u))]``, with
    ``log q(u) = log N(u; 0, I)`` and ``log p(z) = log N(z; 0, I)`` through
    :func:`fastvae.gaussian_log_prob`; ``z_0`` is drawn with :func:`fastvae.reparameterize` from the
    explicit noise ``u``. The generative model is the plain VAE's: ``sample`` decodes ``z ~ N(0, I)``.

    ``forward`` returns ``ModelOutput(recon, z, logits, mu, logvar, u, context, log_det, kl)`` with
    ``log_det (B,)`` and ``kl (B,)`` per example (so the inherited ``elbo`` is this model's ELBO).
    ``reconstruct`` decodes ``F_x(0)``; ``log_likelihood(x, k)`` is the importance-sampled estimate with
    ``q(z|x) = q(u) / |det|``.

    The paper's experiments used Glow-sized convolutional flows on CelebA-HQ; here ``F_x`` is a small
    stack of dense couplings on the ``latent_dim``-dimensional latent of the shared 64 x 64 encoder,
    a scaled-down choice (not the paper's numbers).

    Args:
        input_shape: ``(C, H, W)`` or ``(D,)``.
        latent_dim: size of ``z`` (at least 2 when ``num_flows > 0``).
        num_flows: number of conditional coupling layers (default 4: each coordinate is transformed
            twice).
        flow_hidden: width of each coupling network's two hidden layers (default 64).
        context_dim: size of the encoding ``h(x)`` the couplings condition on (default 32).
        likelihood: ``"bernoulli"`` (default) or ``"gaussian"``.
        obs_std: standard deviation of the Gaussian observation model.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        latent_dim: int,
        *,
        num_flows: int = 4,
        flow_hidden: int = 64,
        context_dim: int = 32,
        likelihood: str = "bernoulli",
        obs_std: float = 1.0,
    ) -> None:
        super().__init__(input_shape, latent_dim, likelihood=likelihood, obs_std=obs_std)
        self.num_flows = check_int(num_flows, "num_flows", 0)
        self.flow_hidden = check_int(flow_hidden, "flow_hidden", 1)
        self.context_dim = check_int(context_dim, "context_dim", 1)
        if num_flows > 0 and latent_dim < 2:
            raise ValueError(f"latent_dim must be >= 2 for coupling layers (num_flows={num_flows}), got {latent_dim}")
        self.encoder = build_encoder(self.input_shape, 2 * latent_dim + context_dim)
        self.couplings = nn.ModuleList(
            ConditionalAffineCoupling(latent_dim, context_dim, flow_hidden, parity=k % 2) for k in range(num_flows)
        )

    def posterior_parameters(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(mu, logvar, context)`` of ``F_x``: ``(B, latent_dim)``, ``(B, latent_dim)``, ``(B, context_dim)``."""
        d = self.latent_dim
        features = self.encoder(x)
        return features[:, :d], features[:, d : 2 * d], features[:, 2 * d :]

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The affine first stage's ``(mu, logvar)``, each ``(B, latent_dim)``."""
        mu, logvar, _ = self.posterior_parameters(x)
        return mu, logvar

    def flow(
        self, u: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, context: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``F_x(u)`` and ``log|det dF_x/du|``: ``u (B, D)`` -> ``(z (B, D), log_det (B,))``."""
        z = ops.reparameterize(mu, logvar, eps=u)
        log_det = 0.5 * logvar.sum(-1)
        for coupling in self.couplings:
            z, layer_log_det = coupling(z, context)
            log_det = log_det + layer_log_det
        return z, log_det

    def flow_inverse(
        self, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, context: torch.Tensor
    ) -> torch.Tensor:
        """``F_x^{-1}(z)``: ``z (B, D)`` -> ``u (B, D)``."""
        for coupling in reversed(self.couplings):
            z = coupling.inverse(z, context)
        return (z - mu) * torch.exp(-0.5 * logvar)

    def _kl_estimate(self, u: torch.Tensor, z: torch.Tensor, log_det: torch.Tensor) -> torch.Tensor:
        """``log q(u) - log|det| - log p(z)`` per example, float32 ``(B,)``."""
        return ops.gaussian_log_prob(u.float()) - log_det.float() - ops.gaussian_log_prob(z.float())

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> ModelOutput:
        """Encode, draw ``u ~ N(0, I)``, push it through ``F_x``, decode. ``x (B, *input_shape)``."""
        x = self.check_input(x)
        mu, logvar, context = self.posterior_parameters(x)
        u = torch.randn_like(mu)
        z, log_det = self.flow(u, mu, logvar, context)
        logits = self.decode(z)
        return ModelOutput(
            recon=self.mean(logits), z=z, logits=logits, mu=mu, logvar=logvar, u=u, context=context, log_det=log_det,
            kl=self._kl_estimate(u, z, log_det),
        )

    def loss(
        self, x: torch.Tensor, out: ModelOutput, y: torch.Tensor | None = None, step: int | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"loss": recon + kl, "recon", "kl", "log_det"}``, 0-dim float32 (``step`` unused)."""
        recon = self.reconstruction_nll(x, out.logits).mean()
        kl = out.kl.float().mean()
        return {"loss": recon + kl, "recon": recon, "kl": kl, "log_det": out.log_det.float().mean()}

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decode ``F_x(0)``, the image of the noise's mode, ``(B, *input_shape)`` in data space."""
        x = self.check_input(x)
        mu, logvar, context = self.posterior_parameters(x)
        z, _ = self.flow(torch.zeros_like(mu), mu, logvar, context)
        return self.mean(self.decode(z))

    @torch.no_grad()
    def log_likelihood(
        self, x: torch.Tensor, k: int = 100, y: torch.Tensor | None = None, *, chunk: int = 50
    ) -> torch.Tensor:
        """Importance-sampled ``log p(x)`` with ``k`` flow-posterior samples, ``(B,)`` float32::

            log p(x) ~= log (1/k) sum_i p(x|z_i) p(z_i) |det dF_x/du (u_i)| / q(u_i),  z_i = F_x(u_i)

        through :func:`fastvae.gaussian_log_prob` and :func:`fastvae.iwae_bound`, ``chunk`` samples at a time.
        """
        x = self.check_input(x)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        mu, logvar, context = self.posterior_parameters(x)
        log_w = []
        for start in range(0, k, chunk):
            m = min(chunk, k - start)
            rep = [t.repeat(m, 1) for t in (mu, logvar, context)]
            u = torch.randn_like(rep[0])
            z, log_det = self.flow(u, *rep)
            log_px_z = -self.reconstruction_nll(x.repeat(m, *[1] * len(self.input_shape)), self.decode(z))
            log_w.append((log_px_z - self._kl_estimate(u, z, log_det)).reshape(m, x.shape[0]))
        return ops.iwae_bound(torch.cat(log_w), dim=0)
