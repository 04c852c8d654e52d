"""``nvae``: a small deep hierarchical VAE with residual cells (Vahdat & Kautz 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastvae import ops
from fastvae.ops._checks import check_int, check_step, check_weight
from fastvae.models.base import ModelOutput, ObservationModel
from fastvae.models.registry import register

__all__ = ["NVAE", "ResidualCell", "SpectralPowerIteration", "SqueezeExcitation", "soft_clamp"]

#: Batch-norm momentum of NVAE's cells (its ``BN_MOMENTUM``).
BN_MOMENTUM = 0.05
#: NVAE scales every residual branch by this before adding it to the skip path.
RESIDUAL_SCALE = 0.1


def soft_clamp(x: torch.Tensor, bound: float = 5.0) -> torch.Tensor:
    """``bound * tanh(x / bound)``: NVAE's ``soft_clamp5`` of Gaussian parameters (keeps them in ``(-5, 5)``)."""
    return bound * torch.tanh(x / bound)


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): ``x * sigmoid(W2 relu(W1 mean_hw(x)))``, per channel."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.gate = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, C, H, W)`` -> same shape."""
        return x * self.gate(x.mean(dim=(2, 3)))[:, :, None, None]


class ResidualCell(nn.Module):
    """NVAE's residual cell: ``skip(x) + 0.1 * SE(Conv3x3(Swish(BN(Conv3x3(Swish(BN(x)))))))``.

    ``resample="down"`` halves the side in the first convolution (stride 2) and the skip path is a
    stride-2 1 x 1 convolution (NVAE uses a factorised reduction there); ``resample="up"`` doubles
    the side first (nearest neighbour) in both paths, the skip path then being a 1 x 1 convolution.
    ``(B, c_in, H, W) -> (B, c_out, H', W')``.
    """

    def __init__(self, c_in: int, c_out: int, resample: str = "none") -> None:
        super().__init__()
        if resample not in ("none", "down", "up"):
            raise ValueError(f"resample must be 'none', 'down' or 'up', got {resample!r}")
        stride = 2 if resample == "down" else 1
        up: list[nn.Module] = [nn.Upsample(scale_factor=2, mode="nearest")] if resample == "up" else []
        self.branch = nn.Sequential(
            *up, nn.BatchNorm2d(c_in, momentum=BN_MOMENTUM), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, stride, 1),
            nn.BatchNorm2d(c_out, momentum=BN_MOMENTUM), nn.SiLU(), nn.Conv2d(c_out, c_out, 3, 1, 1),
            SqueezeExcitation(c_out),
        )
        if resample == "none" and c_in == c_out:
            self.skip: nn.Module = nn.Identity()
        else:
            self.skip = nn.Sequential(*up, nn.Conv2d(c_in, c_out, 1, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the cell."""
        return self.skip(x) + RESIDUAL_SCALE * self.branch(x)


class SpectralPowerIteration(nn.Module):
    """Largest singular values of convolution weights by power iteration (Miyato et al. 2018), as
    NVAE's spectral regularisation computes them.

    Each weight ``W (out, in, kh, kw)`` is read as the matrix ``W.reshape(out, -1)``; the buffers
    ``u_i (out,)`` and ``v_i (in * kh * kw,)`` persist between calls, so one iteration per training
    step tracks the slowly changing weights. The estimate ``sigma_i = u_i^T W_i v_i`` is
    differentiable in ``W_i`` (``u``, ``v`` are constants), with gradient ``u_i v_i^T``.
    """

    def __init__(self, shapes: list[tuple[int, int]]) -> None:
        super().__init__()
        self.count = len(shapes)
        for i, (rows, cols) in enumerate(shapes):
            self.register_buffer(f"u{i}", F.normalize(torch.randn(rows), dim=0))
            self.register_buffer(f"v{i}", F.normalize(torch.randn(cols), dim=0))

    @torch.no_grad()
    def iterate(self, weights: list[torch.Tensor], iterations: int) -> None:
        """Advance every ``(u_i, v_i)`` by ``iterations`` power-iteration steps on ``weights[i]``."""
        for i, weight in enumerate(weights):
            u, v = getattr(self, f"u{i}"), getattr(self, f"v{i}")
            matrix = weight.detach().reshape(weight.shape[0], -1).to(u.dtype)
            for _ in range(iterations):
                v = F.normalize(matrix.t() @ u, dim=0)
                u = F.normalize(matrix @ v, dim=0)
            getattr(self, f"u{i}").copy_(u)
            getattr(self, f"v{i}").copy_(v)

    def forward(self, weights: list[torch.Tensor]) -> torch.Tensor:
        """``sigma_i = u_i^T W_i v_i`` for every weight, ``(len(weights),)`` in the buffers' dtype (float32 unless
        the model was converted)."""
        sigmas = []
        for i, w in enumerate(weights):
            u, v = getattr(self, f"u{i}"), getattr(self, f"v{i}")
            sigmas.append(u @ (w.reshape(w.shape[0], -1).to(u.dtype) @ v))
        return torch.stack(sigmas)


@register("nvae")
class NVAE(ObservationModel):
    """NVAE of Vahdat & Kautz, "NVAE: A Deep Hierarchical Variational Autoencoder" (NeurIPS 2020),
    scaled down for 64 x 64 dSprites.

    **Architecture.** Every cell is a :class:`ResidualCell` (``BN - Swish - Conv3x3 - BN - Swish -
    Conv3x3 - SE``, residual branch scaled by 0.1, the paper's encoder cell). Bottom-up: a 3 x 3
    stem on ``2x - 1``, ``num_preprocess`` down-sampling cells (64 -> 16 by default, channels
    doubling), then ``num_scales`` latent scales (16 x 16, then 8 x 8, with a down-sampling cell
    between them, channels doubling), ``groups_per_scale`` cells each, whose outputs are the
    features ``e_l`` of the latent groups. Top-down: a learned feature map ``h`` at the top scale,
    then for each group ``l = 1..L`` (``L = num_scales * groups_per_scale``, coarse to fine)
    ``cells_per_group`` cells (not before the first group), the prior and posterior of ``z_l``
    (``latent_dim`` channels at the scale's resolution) and the combiner ``h <- Conv1x1([h, z_l])``;
    up-sampling cells between scales and ``num_preprocess`` of them after the last scale, then
    ``ELU - Conv3x3`` to the decoder's logits.

    **Distributions** (all diagonal Gaussians, over the group's flattened ``latent_dim * h * w``)::

        p(z_1) = N(0, I);  p(z_l | z_<l) = N(mu_p, sigma_p^2),  (mu_p, log sigma_p) = Conv3x3(ELU(h))
        q(z_l | z_<l, x) = N(mu_p + dmu, (sigma_p * dsigma)^2)     (the paper's residual parameterisation)
        (dmu, log dsigma) = Conv3x3(e_l + Conv1x1(h))              (e_l: the encoder's feature of group l)

    (for ``l = 1`` the encoder feature goes through ``ELU - Conv1x1 - ELU`` and the prior is
    ``N(0, I)``); ``mu_p, log sigma_p, dmu, log dsigma`` are each soft-clamped to ``(-5, 5)``
    (:func:`soft_clamp`). Inputs are mapped to ``[-1, 1]`` as in NVAE.

    **Loss** (the seed table's ELBO with NVAE's KL warm-up and spectral regularisation)::

        recon    = mean_b [ -log p(x_b | z_b) ]                                 (summed over pixels)
        kl_l     = mean_b [ KL(q(z_l | z_<l, x_b) || p(z_l | z_<l)) ]            (closed form, summed over the group)
        kl       = sum_l kl_l
        beta     = max(min(step / kl_warmup_steps, 1), kl_min_coeff)           (beta(None) = 1)
        spectral = sum_i sigma_max(W_i)                                         (every Conv2d, power iteration)
        loss     = recon + beta * kl + spectral_weight * spectral

    Each group KL goes through :func:`fastvae.gaussian_kl` between the two diagonal Gaussians
    (through the single-sample ``z_<l`` they condition on), and ``z_l`` is drawn with
    :func:`fastvae.reparameterize`. ``loss`` returns ``loss``, ``recon``, ``kl``, ``kl_coeff``
    (beta), ``spectral`` and ``kl_group<l>`` for ``l = 0..L-1`` (top group first).
    ``sigma_max(W)`` is the largest singular value of ``W.reshape(out, -1)``, estimated by
    :class:`SpectralPowerIteration`; every ``loss`` call in training mode first advances the power
    iteration by ``power_iterations`` steps (10 at construction), in evaluation mode it does not.
    The schedule depends on ``step`` only (training steps).

    ``forward`` returns ``ModelOutput(recon, z, zs, logits, kl, kl_groups, posteriors, priors, deltas)``:
    ``zs`` the list of group samples ``(B, latent_dim, h, w)`` (top first), ``z`` them flattened and
    concatenated ``(B, sum of group sizes)``, ``kl (B,)`` the total and ``kl_groups
    (B, L)`` the per-group KLs, and ``posteriors``/``priors``/``deltas`` lists of ``(mu, logvar)``
    pairs, each ``(B, latent_dim * h * w)`` (``deltas``: ``(dmu, 2 log dsigma)``). ``sample(n)`` draws
    every group from the prior; ``reconstruct`` uses the posterior means;
    ``log_likelihood(x, k)`` is importance-sampled with the hierarchical posterior.

    **Scaled down from the paper** (its CelebA 64 run: 3 latent scales x 20 groups of 20 channels,
    64 base channels, two cells per group, logistic-mixture decoder, ``weight_decay_norm`` 0.1,
    KL warm-up over 30 % of training from 1e-4): here 2 scales x 2 groups, 16 base channels, one
    cell per group, a Bernoulli decoder (dSprites is binary; the paper used Bernoulli for MNIST),
    and the warm-up over 1,500 steps (30 % of the trainer's default 5,000). Left out: the paper's
    generative cell (an inverted residual with a depthwise 5 x 5 convolution; the encoder's cell
    is used in both directions here, because depthwise-convolution backward passes are very slow
    on CPU, where this model is tested), weight normalisation, the batch-norm regulariser,
    normalising flows in the posterior, KL balancing between groups, and the readjustment of
    batch-norm statistics before sampling; the soft clamp is applied to the prior's and the
    residual's parameters rather than to their sums, so the residual form is exact.

    Args:
        input_shape: ``(C, H, W)``, sides divisible by ``2 ** (num_preprocess + num_scales - 1)``.
        latent_dim: latent channels per group (the paper's ``num_latent_per_group``).
        num_channels: channels after the stem (doubled at each down-sampling).
        num_scales: latent scales (default 2: 16 x 16 and 8 x 8 for 64 x 64 inputs).
        groups_per_scale: latent groups per scale (default 2).
        num_preprocess: down-sampling cells before the first latent scale (default 2: 64 -> 16).
        cells_per_group: decoder cells before each group's prior (default 1).
        spectral_weight: lambda, the weight of the spectral regulariser (default 0.1).
        power_iterations: power-iteration steps per training ``loss`` call (default 1).
        kl_warmup_steps: training steps over which beta rises to 1 (default 1500).
        kl_min_coeff: beta's floor during warm-up (default 1e-4).
        likelihood: ``"bernoulli"`` (default) or ``"gaussian"``.
        obs_std: standard deviation of the Gaussian observation model.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        latent_dim: int,
        *,
        num_channels: int = 16,
        num_scales: int = 2,
        groups_per_scale: int = 2,
        num_preprocess: int = 2,
        cells_per_group: int = 1,
        spectral_weight: float = 0.1,
        power_iterations: int = 1,
        kl_warmup_steps: int = 1500,
        kl_min_coeff: float = 1e-4,
        likelihood: str = "bernoulli",
        obs_std: float = 1.0,
    ) -> None:
        super().__init__(input_shape, latent_dim, likelihood=likelihood, obs_std=obs_std)
        channels = check_int(num_channels, "num_channels", 1)
        self.num_scales = check_int(num_scales, "num_scales", 1)
        self.groups_per_scale = check_int(groups_per_scale, "groups_per_scale", 1)
        num_preprocess = check_int(num_preprocess, "num_preprocess", 0)
        cells_per_group = check_int(cells_per_group, "cells_per_group", 0)
        self.spectral_weight = check_weight("spectral_weight", spectral_weight)
        self.power_iterations = check_int(power_iterations, "power_iterations", 0)
        self.kl_warmup_steps = check_int(kl_warmup_steps, "kl_warmup_steps", 1)
        self.kl_min_coeff = check_weight("kl_min_coeff", kl_min_coeff)
        if self.kl_min_coeff > 1:
            raise ValueError(f"kl_min_coeff must be in [0, 1], got {kl_min_coeff!r}")
        factor = 2 ** (num_preprocess + num_scales - 1)
        if len(self.input_shape) != 3 or self.input_shape[1] % factor or self.input_shape[2] % factor:
            raise ValueError(
                f"input_shape must be (C, H, W) with H and W divisible by {factor} "
                f"(2 ** (num_preprocess + num_scales - 1)) for nvae, got {self.input_shape}"
            )
        self.num_groups = num_scales * groups_per_scale
        in_channels, height, width = self.input_shape
        d = latent_dim

        # bottom-up
        self.stem = nn.Conv2d(in_channels, channels, 3, padding=1)
        pre = []
        for _ in range(num_preprocess):
            pre.append(ResidualCell(channels, 2 * channels, "down"))
            channels *= 2
        self.preprocess = nn.Sequential(*pre)
        scale_channels = []  # channels of each latent scale, finest first
        self.encoder_groups = nn.ModuleList()
        self.encoder_downs = nn.ModuleList()
        for s in range(num_scales):
            scale_channels.append(channels)
            self.encoder_groups.extend(ResidualCell(channels, channels) for _ in range(groups_per_scale))
            if s < num_scales - 1:
                self.encoder_downs.append(ResidualCell(channels, 2 * channels, "down"))
                channels *= 2
        self.encoder0 = nn.Sequential(nn.ELU(), nn.Conv2d(channels, channels, 1), nn.ELU())

        # top-down: group l lives at scale l // groups_per_scale counted from the top
        top_side = (height // factor, width // factor)
        self.top = nn.Parameter(torch.rand(1, channels, *top_side))
        group_channels = [scale_channels[::-1][l // groups_per_scale] for l in range(self.num_groups)]
        self.decoder_groups = nn.ModuleList(
            nn.Sequential(*(ResidualCell(c, c) for _ in range(cells_per_group)))
            for c in group_channels[1:]
        )
        self.prior_heads = nn.ModuleList(
            nn.Sequential(nn.ELU(), nn.Conv2d(c, 2 * d, 3, padding=1)) for c in group_channels[1:]
        )
        self.encoder_combiners = nn.ModuleList(nn.Conv2d(c, c, 1) for c in group_channels[1:])
        self.posterior_heads = nn.ModuleList(nn.Conv2d(c, 2 * d, 3, padding=1) for c in group_channels)
        self.decoder_combiners = nn.ModuleList(nn.Conv2d(c + d, c, 1) for c in group_channels)
        self.decoder_ups = nn.ModuleList(
            ResidualCell(c, c // 2, "up") for c in scale_channels[:0:-1]
        )
        post = []
        channels = scale_channels[0]
        for _ in range(num_preprocess):
            post.append(ResidualCell(channels, channels // 2, "up"))
            channels //= 2
        self.postprocess = nn.Sequential(*post)
        self.to_logits = nn.Sequential(nn.ELU(), nn.Conv2d(num_channels, in_channels, 3, padding=1))

        self.spectral = SpectralPowerIteration([(w.shape[0], w[0].numel()) for w in self.conv_weights()])
        self.spectral.iterate(self.conv_weights(), 10)

    # --- pieces ------------------------------------------------------------------------------------

    def conv_weights(self) -> list[torch.Tensor]:
        """The weight of every ``nn.Conv2d`` of the model, in module order (what the regulariser sums over)."""
        return [m.weight for m in self.modules() if isinstance(m, nn.Conv2d)]

    def spectral_norms(self) -> torch.Tensor:
        """The current power-iteration estimates of each conv weight's largest singular value, ``(N,)``."""
        return self.spectral(self.conv_weights())

    def kl_coefficient(self, step: int | None) -> float:
        """The KL warm-up weight ``beta(step) = max(min(step / kl_warmup_steps, 1), kl_min_coeff)``; 1 for None."""
        step = check_step(step)
        if step is None:
            return 1.0
        return max(min(step / self.kl_warmup_steps, 1.0), self.kl_min_coeff)

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's feature for each group, top-down order (the first through ``encoder0``)."""
        s = self.preprocess(self.stem(2.0 * x - 1.0))
        features = []
        groups = iter(self.encoder_groups)
        for scale in range(self.num_scales):
            for _ in range(self.groups_per_scale):
                s = next(groups)(s)
                features.append(s)
            if scale < self.num_scales - 1:
                s = self.encoder_downs[scale](s)
        features[-1] = self.encoder0(features[-1])
        return features[::-1]

    @staticmethod
    def _gaussian(head: nn.Module, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A head's ``(mu, logvar)``, soft-clamped, flattened to ``(B, latent * h * w)`` (logvar = 2 log sigma)."""
        mu, log_sigma = head(h).chunk(2, dim=1)
        return soft_clamp(mu).flatten(1).float(), 2.0 * soft_clamp(log_sigma).flatten(1).float()

    def _top_down(self, batch: int, features: list[torch.Tensor] | None, use_mean: bool = False) -> ModelOutput:
        """Run the generative hierarchy; with ``features`` (the encoder's) sample the posterior, else the prior."""
        h = self.top.expand(batch, -1, -1, -1)
        zs, kls, posteriors, priors, deltas = [], [], [], [], []
        for l in range(self.num_groups):
            side = h.shape[2:]
            if l == 0:
                mu_p = torch.zeros(batch, self.latent_dim * side.numel(), device=h.device)
                logvar_p = torch.zeros_like(mu_p)
            else:
                h = self.decoder_groups[l - 1](h)
                mu_p, logvar_p = self._gaussian(self.prior_heads[l - 1], h)
            if features is None:
                mu, logvar = mu_p, logvar_p
            else:
                e = features[0] if l == 0 else features[l] + self.encoder_combiners[l - 1](h)
                d_mu, d_logvar = self._gaussian(self.posterior_heads[l], e)
                mu, logvar = mu_p + d_mu, logvar_p + d_logvar
                kls.append(ops.gaussian_kl(mu, logvar) if l == 0 else ops.gaussian_kl(mu, logvar, mu_p, logvar_p))
                deltas.append((d_mu, d_logvar))
            z = mu if use_mean else ops.reparameterize(mu, logvar)
            posteriors.append((mu, logvar))
            priors.append((mu_p, logvar_p))
            z = z.reshape(batch, self.latent_dim, *side).to(h.dtype)
            zs.append(z)
            h = self.decoder_combiners[l](torch.cat([h, z], dim=1))
            if (l + 1) % self.groups_per_scale == 0 and l + 1 < self.num_groups:
                h = self.decoder_ups[l // self.groups_per_scale](h)
        logits = self.to_logits(self.postprocess(h))
        out = ModelOutput(
            recon=self.mean(logits), z=torch.cat([z.flatten(1) for z in zs], dim=1), zs=zs, logits=logits, priors=priors
        )
        if features is not None:
            kl_groups = torch.stack(kls, dim=1)
            out.update(kl=kl_groups.sum(1), kl_groups=kl_groups, posteriors=posteriors, deltas=deltas)
        return out

    # --- the model interface ----------------------------------------------------------------------

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> ModelOutput:
        """Encode bottom-up, sample every group top-down from the posterior, decode. ``x (B, C, H, W)``."""
        x = self.check_input(x)
        return self._top_down(x.shape[0], self._features(x))

    def loss(
        self, x: torch.Tensor, out: ModelOutput, y: torch.Tensor | None = None, step: int | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"loss": recon + beta * kl + spectral_weight * spectral, "recon", "kl", "kl_coeff", "spectral",
        "kl_group<l>"...}``, 0-dim float32. Advances the power iteration in training mode."""
        beta = self.kl_coefficient(step)
        if self.training and self.power_iterations:
            self.spectral.iterate(self.conv_weights(), self.power_iterations)
        recon = self.reconstruction_nll(x, out.logits).mean()
        kl_groups = out.kl_groups.float().mean(0)
        kl = kl_groups.sum()
        spectral = self.spectral_norms().float().sum()
        terms = {
            "loss": recon + beta * kl + self.spectral_weight * spectral,
            "recon": recon,
            "kl": kl,
            "kl_coeff": torch.tensor(beta, dtype=torch.float32, device=kl.device),
            "spectral": spectral,
        }
        terms.update({f"kl_group{l}": value for l, value in enumerate(kl_groups.unbind(0))})
        return terms

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` samples, every group drawn from its prior, ``(n, C, H, W)`` in data space."""
        return self._top_down(n, None).recon

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstructions with every group at its posterior mean, ``(B, C, H, W)`` in data space."""
        x = self.check_input(x)
        return self._top_down(x.shape[0], self._features(x), use_mean=True).recon

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, k: int = 100, y: torch.Tensor | None = None) -> torch.Tensor:
        """Importance-sampled ``log p(x)`` with ``k`` samples of the hierarchical posterior, ``(B,)`` float32::

            log p(x) ~= log (1/k) sum_i p(x|z^i) prod_l p(z_l^i | z_<l^i) / q(z_l^i | z_<l^i, x)

        through :func:`fastvae.gaussian_log_prob` and :func:`fastvae.iwae_bound`, one sample at a time.
        """
        x = self.check_input(x)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        features = self._features(x)
        log_w = []
        for _ in range(k):
            out = self._top_down(x.shape[0], features)
            total = -self.reconstruction_nll(x, out.logits)
            for z, (mu, logvar), (mu_p, logvar_p) in zip(out.zs, out.posteriors, out.priors):
                flat = z.flatten(1).float()
                total = total + ops.gaussian_log_prob(flat, mu_p, logvar_p) - ops.gaussian_log_prob(flat, mu, logvar)
            log_w.append(total)
        return ops.iwae_bound(torch.stack(log_w), dim=0)
