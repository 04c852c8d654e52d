"""VectorQuantizer: a VQ-VAE codebook layer with EMA updates, dead-code restart and DDP sync."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from fastvae.ops import _checks
from fastvae.ops.vq import PRECISIONS, VQOutput, vector_quantize_rows, vq_code_stats

__all__ = ["VectorQuantizer"]


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


class VectorQuantizer(nn.Module):
    """Quantise vectors to the nearest of ``num_codes`` learned codes (van den Oord et al. 2017).

    Forward runs :func:`fastvae.vector_quantize` on the input with its channel dim moved last, so
    ``(B, C, H, W)`` feature maps work with ``channel_dim=1``.

    Codebook learning:

    * ``ema=False``: ``codebook`` is an ``nn.Parameter`` trained by ``codebook_loss`` through the
      optimiser; ``loss = codebook_loss + beta * commitment_loss``.
    * ``ema=True``: ``codebook`` is a buffer updated in training mode by exponential moving averages
      (the VQ-VAE paper's appendix A.1): per code ``k`` with ``n_k`` batch vectors summing to ``s_k``,
      ``N_k <- decay N_k + (1 - decay) n_k``, ``m_k <- decay m_k + (1 - decay) s_k``, Laplace-smoothed
      ``N'_k = (N_k + eps) / (n + K eps) * n`` with ``n = sum_k N_k``, and ``e_k = m_k / N'_k``. The
      codebook takes no gradient, so ``loss = beta * commitment_loss``. Eval mode never updates.

    Both modes track the EMA count ``N_k`` of code usage in training mode (buffer ``ema_count``,
    starting at 1 for every code, with ``ema_sum`` starting at the initial codebook so that
    ``e_k = m_k / N_k`` holds from the start). With ``dead_code_threshold > 0``, after each update
    every code whose ``N_k`` is below the threshold restarts at a random vector of the batch, with
    ``N_k`` reset to ``max(1, dead_code_threshold)``: the dead codes draw distinct rows (without
    replacement) among the batch's finite rows; when the batch has fewer finite rows than there are
    dead codes, the lowest-index dead codes take them all and the others stay as they are until a
    later step. When ``torch.distributed`` is initialised the counts and sums are all-reduced and
    restarts use rank 0's picks, so every rank keeps the same codebook. No step synchronises with
    the host.

    Non-finite batches: a code whose batch count or sum, or whose new EMA count or sum (or, with EMA,
    new codebook row), is NaN or infinite skips this step's update: its ``N_k``, ``m_k`` and codebook
    row stay as they were (a ``torch.where``, no host synchronisation), and its entry of the buffer
    ``skipped_updates`` (``(K,)`` int64, the number of skipped updates per code) grows by one. The
    other codes update as usual, so one NaN or inf batch never poisons the codebook; the output of
    that forward (``quantized``, the losses) carries the NaN as it is. State dicts saved without
    ``skipped_updates`` load with zeros.

    Args:
        num_codes: codebook size ``K``.
        dim: code dimension ``D`` (the input's size along ``channel_dim``).
        beta: commitment weight, ``>= 0``.
        ema: learn the codebook by EMA instead of by gradient.
        decay: EMA decay in ``[0, 1)``.
        eps: Laplace smoothing constant, ``> 0``.
        dead_code_threshold: EMA count under which a code restarts; 0 disables restarts.
        metric: ``"l2"`` or ``"cosine"`` (inputs and codes L2-normalised, see
            :func:`fastvae.vector_quantize`; EMA statistics then use the normalised inputs).
        channel_dim: the input dim that holds the ``D`` channels.
        precision: ``"ieee"`` (default: exact float32 products) or ``"tf32"`` (TF32 tensor cores):
            how the nearest-code search multiplies float32 inputs, passed to
            :func:`fastvae.vector_quantize`. Other dtypes ignore it.

    Shapes:
        input ``x``: any shape with ``D`` along ``channel_dim``; float16, bfloat16, float32 or
        float64, matching the codebook's dtype. Output: :class:`fastvae.VQOutput` with ``quantized``
        in ``x``'s layout and ``indices`` of ``x``'s shape without ``channel_dim``.
    """

    codebook: torch.Tensor
    ema_count: torch.Tensor
    skipped_updates: torch.Tensor

    def __init__(
        self,
        num_codes: int,
        dim: int,
        *,
        beta: float = 0.25,
        ema: bool = False,
        decay: float = 0.99,
        eps: float = 1e-5,
        dead_code_threshold: float = 0.0,
        metric: str = "l2",
        channel_dim: int = -1,
        precision: str = "ieee",
    ) -> None:
        super().__init__()
        self.num_codes = _positive_int(num_codes, "num_codes")
        self.dim = _positive_int(dim, "dim")
        self.beta = _checks.number(beta, "beta", low=0.0)
        if not isinstance(ema, bool):
            raise TypeError(f"ema must be a bool, got {type(ema).__name__}")
        self.ema = ema
        self.decay = _checks.number(decay, "decay", low=0.0)
        if self.decay >= 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.eps = _checks.number(eps, "eps", low=0.0)
        if self.eps == 0.0:
            raise ValueError("eps must be > 0, got 0")
        self.dead_code_threshold = _checks.number(dead_code_threshold, "dead_code_threshold", low=0.0)
        self.metric = _checks.choice(metric, "metric", _checks.METRICS)
        if isinstance(channel_dim, bool) or not isinstance(channel_dim, int):
            raise TypeError(f"channel_dim must be an int, got {type(channel_dim).__name__}")
        self.channel_dim = channel_dim
        self.precision = _checks.choice(precision, "precision", PRECISIONS)

        initial = torch.empty(num_codes, dim).uniform_(-1.0 / num_codes, 1.0 / num_codes)
        if ema:
            self.register_buffer("codebook", initial)
            self.register_buffer("ema_sum", initial.clone())
        else:
            self.codebook = nn.Parameter(initial)
        self.register_buffer("ema_count", torch.ones(num_codes))
        self.register_buffer("skipped_updates", torch.zeros(num_codes, dtype=torch.int64))

    def extra_repr(self) -> str:
        return (
            f"num_codes={self.num_codes}, dim={self.dim}, beta={self.beta}, ema={self.ema}, "
            f"decay={self.decay}, eps={self.eps}, dead_code_threshold={self.dead_code_threshold}, "
            f"metric={self.metric!r}, channel_dim={self.channel_dim}, precision={self.precision!r}"
        )

    def _channels_last(self, x: torch.Tensor) -> torch.Tensor:
        x = _checks.tensor(x, "x", min_dim=1)
        channel_dim = _checks.dim_index(self.channel_dim, "channel_dim", x.dim())
        if x.shape[channel_dim] != self.dim:
            raise ValueError(
                f"x must have dim={self.dim} channels along channel_dim={self.channel_dim}, got shape {tuple(x.shape)}"
            )
        return x.movedim(channel_dim, -1)

    def forward(self, x: torch.Tensor) -> VQOutput:
        """Quantise ``x`` and, in training mode, update the codebook statistics.

        Returns:
            :class:`fastvae.VQOutput` as described in the class docstring.
        """
        moved = self._channels_last(x)
        # With EMA the update replaces the codebook buffer by a new tensor, so the op keeps the codes
        # it quantised with and nothing is copied. A trained codebook (a Parameter, which the
        # optimiser holds) is restarted in place: then the op gets a copy, or backward would see the
        # restarted rows.
        restarts_parameter = self.training and not self.ema and self.dead_code_threshold > 0
        codebook = self.codebook.clone() if restarts_parameter else self.codebook
        out, rows = vector_quantize_rows(moved, codebook, beta=self.beta, metric=self.metric, precision=self.precision)
        if self.training:
            self._update(rows.detach(), out.indices)
        loss = self.beta * out.commitment_loss if self.ema else out.loss
        channel_dim = self.channel_dim % x.dim()
        return out._replace(quantized=out.quantized.movedim(-1, channel_dim), loss=loss)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # State dicts saved before ``skipped_updates`` existed load with a zero count.
        state_dict.setdefault(prefix + "skipped_updates", torch.zeros_like(self.skipped_updates))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def _update(self, rows: torch.Tensor, indices: torch.Tensor) -> None:
        """The EMA statistics and restarts from the searched ``rows (N, D)`` (L2-normalised for the
        cosine metric) and their code ``indices``."""
        if rows.shape[0] == 0:
            return
        counts, sums = vq_code_stats(rows, indices.reshape(-1), self.num_codes)
        if _distributed():
            dist.all_reduce(counts)
            if self.ema:
                dist.all_reduce(sums)
        new_count = self.ema_count.lerp(counts.to(self.ema_count.dtype), 1.0 - self.decay)
        finite = counts.isfinite() & new_count.isfinite()
        if self.ema:
            new_sum = self.ema_sum.lerp(sums.to(self.ema_sum.dtype), 1.0 - self.decay)
            finite &= sums.isfinite().all(1) & new_sum.isfinite().all(1)
            self.ema_sum.copy_(torch.where(finite.unsqueeze(1), new_sum, self.ema_sum))
        self.ema_count.copy_(torch.where(finite, new_count, self.ema_count))
        if self.ema:
            total = self.ema_count.sum()
            smoothed = (self.ema_count + self.eps) / (total + self.num_codes * self.eps) * total
            codebook = self.ema_sum / smoothed.unsqueeze(1)
            finite &= codebook.isfinite().all(1)
            self.codebook = torch.where(finite.unsqueeze(1), codebook, self.codebook)
        self.skipped_updates.add_(~finite)
        if self.dead_code_threshold > 0:
            self._restart_dead_codes(rows)

    def _restart_dead_codes(self, rows: torch.Tensor) -> None:
        """Restart every dead code at its own finite row of ``rows (N, D)``, drawn without replacement.

        The ``j``-th dead code (in index order) takes the ``j``-th row of a random permutation of the
        finite rows; dead codes beyond the number of finite rows stay as they are (and dead) this
        step. On device, no host synchronisation.
        """
        dead = self.ema_count < self.dead_code_threshold
        finite_rows = rows.isfinite().all(1)
        # Random keys, non-finite rows last: the sort is a uniform permutation of the finite rows.
        keys = torch.rand(rows.shape[0], device=rows.device).masked_fill_(~finite_rows, 2.0)
        order = keys.argsort()
        rank = dead.cumsum(0) - 1
        picks = order[rank.clamp(0, rows.shape[0] - 1)]
        restart = dead & (rank < finite_rows.sum())
        # Codes that do not restart get NaN rows: after the broadcast, every rank reads rank 0's choice.
        replacement = torch.where(restart.unsqueeze(1), rows[picks].to(self.codebook.dtype), float("nan"))
        if _distributed():
            dist.broadcast(replacement, src=0)
        restart = replacement.isfinite().all(1)
        reset_count = max(1.0, self.dead_code_threshold)
        restarted = torch.where(restart.unsqueeze(1), replacement, self.codebook)
        if self.ema:
            self.codebook = restarted
        else:
            self.codebook.copy_(restarted)
        if self.ema:
            restarted_sum = replacement.to(self.ema_sum.dtype) * reset_count
            self.ema_sum.copy_(torch.where(restart.unsqueeze(1), restarted_sum, self.ema_sum))
        self.ema_count.copy_(torch.where(restart, reset_count, self.ema_count))
