"""``logcosh_vae``: the VAE with a log-cosh reconstruction loss (Chen et al. 2018)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fastvae.ops._checks import check_weight
from fastvae.models.base import GaussianVAE, ModelOutput
from fastvae.models.registry import register

__all__ = ["LogCoshVAE", "log_cosh"]

#: Values of the ``output`` hyper-parameter: the map from decoder output to the reconstruction.
OUTPUTS: tuple[str, ...] = ("sigmoid", "identity")


def log_cosh(t: torch.Tensor) -> torch.Tensor:
    """``log(cosh(t))`` elementwise, finite for every finite ``t`` (same shape and dtype).

    Computed as ``|t| + softplus(-2|t|) - log 2`` (exact: ``cosh t = e^|t| (1 + e^(-2|t|)) / 2``), so
    ``cosh`` never overflows: ``log_cosh(1e4) = 1e4 - log 2`` where ``torch.log(torch.cosh(...))`` is
    ``inf``. Its derivative is ``tanh(t)``.
    """
    magnitude = t.abs()
    return magnitude + F.softplus(-2.0 * magnitude) - math.log(2.0)


@register("logcosh_vae")
class LogCoshVAE(GaussianVAE):
    """LogCosh VAE of P. Chen, G. Chen & S. Zhang, "Log Hyperbolic Cosine Loss Improves Variational
    Auto-Encoder" (OpenReview, ICLR 2019 submission, 2018).

    The reconstruction term is the log-cosh loss ``(1/a) log cosh(a (x - x_hat))`` per pixel, which
    is quadratic (like L2) for small errors and linear (like L1) for large ones; its gradient is
    ``tanh(a (x - x_hat))``. Read as an observation model, ``p(x|z) ∝ cosh(a (x - x_hat))^(-1/a)`` is
    a proper density with normaliser ``Z_a = B(1/(2a), 1/2) / a`` (B the Beta function), so::

        x_hat  = sigmoid(decoder(z))   (output="sigmoid", data in [0, 1])   or   decoder(z)   ("identity")
        recon  = mean_b [ sum_pixels ( (1/a) log cosh(a (x - x_hat)) + log Z_a ) ]     (= -log p(x|z))
        kl     = mean_b [ KL(q(z|x_b) || N(0, I)) ]                                      (summed over latent dims)
        loss   = recon + beta * kl

    The constant ``D log Z_a`` (``D`` pixels) makes ``recon`` the honest ``-log p(x|z)`` (so
    :meth:`elbo` and :meth:`log_likelihood` are right) and leaves every gradient unchanged: the paper's
    loss is the same minus that constant. ``log cosh`` is computed stably (:func:`log_cosh`).

    Defaults: ``a = 10`` and ``beta = 1`` (the values of PyTorch-VAE's LogCoshVAE, the reference
    implementation the seed document cites; the paper leaves ``a`` as a hyper-parameter).

    Args:
        input_shape: ``(C, H, W)`` or ``(D,)``.
        latent_dim: size of ``z``.
        a: sharpness of the log-cosh loss (default 10); larger is closer to L1.
        beta: the KL weight (default 1).
        output: ``"sigmoid"`` (default: data in [0, 1], such as dSprites) or ``"identity"``.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        latent_dim: int,
        *,
        a: float = 10.0,
        beta: float = 1.0,
        output: str = "sigmoid",
    ) -> None:
        super().__init__(input_shape, latent_dim)
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 < a < math.inf:
            raise ValueError(f"a must be a positive finite number, got {a!r}")
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(map(repr, OUTPUTS))}, got {output!r}")
        self.a = float(a)
        self.beta = check_weight("beta", beta)
        self.output = output
        self.likelihood = "log_cosh"
        #: ``log Z_a``, the per-pixel log-normaliser of the log-cosh density.
        self.log_normalizer = (
            math.lgamma(0.5 / self.a) + math.lgamma(0.5) - math.lgamma(0.5 / self.a + 0.5) - math.log(self.a)
        )

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        """The reconstruction ``x_hat`` for decoder output ``logits`` (sigmoid or identity)."""
        return torch.sigmoid(logits) if self.output == "sigmoid" else logits

    def reconstruction_nll(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``-log p(x|z)`` of the log-cosh density, summed over every non-batch dim:
        ``(..., *input_shape) -> (...)`` float32."""
        error = (x.expand_as(logits).float() - self.mean(logits.float())).flatten(-len(self.input_shape))
        return (log_cosh(self.a * error) / self.a + self.log_normalizer).sum(-1)

    def loss(
        self, x: torch.Tensor, out: ModelOutput, y: torch.Tensor | None = None, step: int | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"loss": recon + beta * kl, "recon", "kl"}``, 0-dim float32 (``step`` unused)."""
        recon = self.reconstruction_nll(x, out.logits).mean()
        kl = out.kl.float().mean()
        return {"loss": recon + self.beta * kl, "recon": recon, "kl": kl}
