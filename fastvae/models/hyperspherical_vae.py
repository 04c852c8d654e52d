"""``hyperspherical_vae``: the S-VAE, a von Mises–Fisher posterior on the sphere (Davidson et al. 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastvae import ops
from fastvae.ops._checks import check_weight
from fastvae.models._gumbel import check_positive
from fastvae.models._vmf import (
    log_sphere_area,
    sample_uniform_sphere,
    sample_vmf,
    vmf_kl_uniform,
    vmf_log_prob,
    wood_log_density,
)
from fastvae.models.base import ModelOutput, ObservationModel
from fastvae.models.nets import build_decoder, build_encoder
from fastvae.models.registry import register

__all__ = ["HypersphericalVAE"]


@register("hyperspherical_vae")
class HypersphericalVAE(ObservationModel):
    """The S-VAE of Davidson, Falorsi, De Cao, Kipf & Tomczak, "Hyperspherical Variational
    Auto-Encoders" (UAI 2018; arXiv 1804.00891).

    The latent ``z`` lives on the unit sphere ``S^{m-1}`` of ``R^m`` (``m = latent_dim >= 2``). The
    encoder gives a mean direction and a concentration, ``q(z|x) = vMF(mu(x), kappa(x))`` with
    ``mu = h / |h|`` and ``kappa = softplus(h_kappa) + kappa_offset``; the prior is uniform on the
    sphere, ``p(z) = 1 / |S^{m-1}|``. The loss is the negative ELBO with one sample::

        z     ~ vMF(mu(x_b), kappa(x_b))                      (Wood's sampler + Householder reflection)
        recon = mean_b [ -log p(x_b | z_b) ]                  (summed over pixels)
        kl    = mean_b [ KL(vMF(mu_b, kappa_b) || U(S^{m-1})) ]
              = mean_b [ kappa A_m(kappa) + log C_m(kappa) + log(2 pi^{m/2} / Gamma(m/2)) ]
        loss  = recon + kl       (+ the value-zero surrogate of g_cor, see below)

    with ``A_m = I_{m/2} / I_{m/2-1}`` and ``C_m(kappa) = kappa^{m/2-1} / ((2 pi)^{m/2} I_{m/2-1}(kappa))``
    computed by :mod:`fastvae.models._vmf` through exponentially scaled Bessel functions (pure
    PyTorch, float64 inside: finite values and gradients for ``kappa`` up to 1e5 and beyond).

    Sampling and its gradient (paper section 3): ``w = mu^T z`` comes from Wood's (1994) rejection
    sampler as ``w = h(eps, kappa)`` of an accepted ``eps ~ Beta((m-1)/2, (m-1)/2)``; with ``v``
    uniform on ``S^{m-2}``, ``z = H(mu) (w, sqrt(1 - w^2) v)`` where ``H(mu)`` is the Householder
    reflection sending ``e1`` to ``mu``. The paper's gradient of the reconstruction term is
    ``g_rep + g_cor`` (after Naesseth et al. 2017):

    * ``g_rep``: back-propagation through ``z`` with ``eps`` and ``v`` held fixed: through ``H(mu)``
      to ``mu`` and through ``w = h(eps, kappa)`` to ``kappa``. Always on.
    * ``g_cor = E[ f(z) d/dkappa log pi(eps | kappa) ]``, ``pi`` the density of the accepted ``eps``
      (:func:`~fastvae.models._vmf.wood_log_density`) and ``f`` the per-example reconstruction term,
      which corrects for the acceptance step depending on ``kappa``. With
      ``gradient_correction=True`` (default) ``loss`` adds the surrogate
      ``mean_b[ sg(f_b - f_loo_b) * (log pi_b - sg(log pi_b)) ]``, zero in value, whose gradient is
      this estimator; ``f_loo_b`` is the mean of the other examples' ``f`` (a leave-one-out baseline:
      it leaves the estimator unbiased, as ``E[d log pi] = 0``, and removes the large common part of
      ``f``; 0 for a batch of one). The baseline is this implementation's choice. The authors'
      public PyTorch code (s-vae-pytorch) back-propagates ``g_rep`` only, which
      ``gradient_correction=False`` reproduces; ``g_rep`` alone is biased for ``kappa`` (the tests
      measure it).

    ``fixed_kappa`` (a number) instead fixes the concentration, as in the formulation with a
    constant ``kappa`` (then the KL is a constant and the loss is effectively the reconstruction
    term alone, the seed table's form); the encoder then outputs ``mu`` only.

    Hyper-parameters (the paper's MNIST models use ``m`` from 2 to 40 and the defaults below; for 64 x
    64 dSprites the registry's ``latent_dim = 10`` gives ``S^9``):

    Args:
        input_shape: ``(C, H, W)`` or ``(D,)``.
        latent_dim: ``m``, the dimension of the space containing the sphere ``S^{m-1}`` (>= 2).
        kappa_offset: added to ``softplus`` for ``kappa`` (1.0, the authors' code: it keeps the
            posterior from collapsing to the uniform).
        fixed_kappa: a constant concentration instead of a learned one (None: learned).
        gradient_correction: add the ``g_cor`` term (True).
        likelihood: ``"bernoulli"`` (default) or ``"gaussian"``, as for :class:`GaussianVAE`.
        obs_std: the Gaussian observation model's standard deviation.

    ``forward`` returns ``ModelOutput(recon, z, logits, mu, kappa, kl, eps)``: ``z (B, m)`` on the
    sphere, ``mu (B, m)`` unit, ``kappa (B,)``, ``kl (B,)``, ``eps (B,)`` the accepted Beta draws
    (float64). ``loss`` returns ``{"loss", "recon", "kl", "kappa"}`` (``kappa``: the batch mean, not
    minimised). :meth:`encode` returns ``(mu, kappa)``; :meth:`reconstruct` decodes ``mu``;
    :meth:`sample` decodes uniform points of the sphere; :meth:`log_likelihood` importance-samples
    with the vMF posterior.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        latent_dim: int,
        *,
        kappa_offset: float = 1.0,
        fixed_kappa: float | None = None,
        gradient_correction: bool = True,
        likelihood: str = "bernoulli",
        obs_std: float = 1.0,
    ) -> None:
        super().__init__(input_shape, latent_dim, likelihood=likelihood, obs_std=obs_std)
        if latent_dim < 2:
            raise ValueError(f"latent_dim must be >= 2 for model 'hyperspherical_vae' (the sphere S^(m-1)), got {latent_dim!r}")
        if not isinstance(gradient_correction, bool):
            raise TypeError(f"gradient_correction must be a bool, got {gradient_correction!r}")
        self.kappa_offset = check_weight("kappa_offset", kappa_offset)
        self.fixed_kappa = None if fixed_kappa is None else check_positive("fixed_kappa", fixed_kappa)
        self.gradient_correction = gradient_correction
        self.encoder = build_encoder(self.input_shape, latent_dim + (self.fixed_kappa is None))
        self.decoder = build_decoder(latent_dim, self.input_shape)

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, kappa)``: unit mean directions ``(B, m)`` and concentrations ``(B,)``."""
        h = self.encoder(x)
        direction = h[:, : self.latent_dim]
        mu = direction / direction.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(direction.dtype).tiny)
        if self.fixed_kappa is not None:
            return mu, torch.full(mu.shape[:1], self.fixed_kappa, device=mu.device, dtype=mu.dtype)
        return mu, F.softplus(h[:, self.latent_dim]) + self.kappa_offset

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder output for points of the sphere ``(B, m)``: ``(B, *input_shape)``."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> ModelOutput:
        """Encode, draw ``z ~ vMF(mu, kappa)`` (reparameterised), decode, and the closed-form KL."""
        x = self.check_input(x)
        mu, kappa = self.encode(x)
        z, eps = sample_vmf(mu, kappa)
        logits = self.decode(z)
        kl = vmf_kl_uniform(kappa.float(), self.latent_dim)
        return ModelOutput(recon=self.mean(logits), z=z, logits=logits, mu=mu, kappa=kappa, kl=kl, eps=eps)

    def loss(
        self, x: torch.Tensor, out: ModelOutput, y: torch.Tensor | None = None, step: int | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"loss": recon + kl [+ g_cor surrogate], "recon", "kl", "kappa"}``, 0-dim float32 (``step`` unused)."""
        nll = self.reconstruction_nll(x, out.logits)
        recon = nll.mean()
        kl = out.kl.float().mean()
        loss = recon + kl
        if self.gradient_correction and self.fixed_kappa is None:
            loss = loss + self.correction_surrogate(nll, out.eps, out.kappa)
        return {"loss": loss, "recon": recon, "kl": kl, "kappa": out.kappa.detach().float().mean()}

    def correction_surrogate(self, nll: torch.Tensor, eps: torch.Tensor, kappa: torch.Tensor) -> torch.Tensor:
        """``mean_b[ sg(f_b - f_loo_b) * (log pi(eps_b|kappa_b) - sg(...)) ]``: value 0, gradient the
        ``g_cor`` estimate for the per-example reconstruction terms ``f = nll (B,)``."""
        batch = nll.shape[0]
        f = nll.detach().float()
        baseline = (f.sum() - f) / (batch - 1) if batch > 1 else torch.zeros_like(f)
        log_pi = wood_log_density(eps, kappa, self.latent_dim)
        return ((f - baseline) * (log_pi - log_pi.detach())).mean().float()

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` samples in data space from uniform points of the sphere, ``(n, *input_shape)``."""
        return self.mean(self.decode(sample_uniform_sphere(n, self.latent_dim, device=self.device)))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstructions from the mean direction (the posterior's mode), ``(B, *input_shape)``."""
        x = self.check_input(x)
        return self.mean(self.decode(self.encode(x)[0]))

    @torch.no_grad()
    def elbo(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The ELBO per example with one posterior sample, ``(B,)`` float32."""
        out = self.forward(x, y)
        return -(self.reconstruction_nll(x, out.logits) + out.kl.float())

    @torch.no_grad()
    def log_likelihood(
        self, x: torch.Tensor, k: int = 100, y: torch.Tensor | None = None, *, chunk: int = 50
    ) -> torch.Tensor:
        """Importance-sampled ``log p(x)`` with ``k`` draws from the vMF posterior, ``(B,)`` float32:
        ``log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x)`` through :func:`fastvae.iwae_bound`."""
        x = self.check_input(x)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        mu, kappa = self.encode(x)
        log_prior = -log_sphere_area(self.latent_dim)
        log_w = []
        for start in range(0, k, chunk):
            m = min(chunk, k - start)
            mu_rep, kappa_rep = mu.repeat(m, 1), kappa.repeat(m)
            z, _ = sample_vmf(mu_rep, kappa_rep)
            log_px = -self.reconstruction_nll(x.repeat(m, *([1] * len(self.input_shape))), self.decode(z))
            log_q = vmf_log_prob(z.double(), mu_rep.double(), kappa_rep.double()).float()
            log_w.append((log_px + log_prior - log_q).reshape(m, -1))
        return ops.iwae_bound(torch.cat(log_w), dim=0)
