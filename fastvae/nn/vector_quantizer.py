"""VectorQuantizer: a VQ-VAE codebook layer with EMA updates, dead-code restart and DDP sync."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from fastvae.ops import _checks
from fastvae.ops.vq import PRECISIONS, VQOutput, vector_quantize_rows, vq_code_stats, vq_nearest

__all__ = ["GRADIENTS", "VectorQuantizer", "kmeans"]

#: Values of ``gradient``: how the quantized output passes its gradient to the input.
GRADIENTS: tuple[str, ...] = ("ste", "rotation")


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rotation_trick(rows: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """The codes, with the rotation trick's gradient to ``rows`` (Fifty et al. 2024, section 4.2).

    With ``u = x / |x|``, ``q = e / |e|``, ``w = (u + q) / |u + q|`` and ``R = I - 2 w w^T + 2 q u^T``
    (the rotation taking ``u`` to ``q``), the output is ``sg[|e| / |x|] R x`` with ``R`` a constant:
    its value is ``e`` (up to rounding) and its gradient to ``x`` is ``(|e| / |x|) R^T g``, instead of
    the straight-through estimator's ``g``. Computed as ``x - 2 (x.w) w + 2 (x.u) q``, no ``D x D``
    matrix, in float32 (float64 for float64). A row with ``x = 0`` gives ``e`` and no gradient.

    Args:
        rows: ``(N, D)`` inputs ``x``, carrying the gradient.
        codes: ``(N, D)`` their codes ``e``, same dtype (their gradient is not used).

    Returns:
        ``(N, D)`` in ``rows``' dtype.
    """
    acc = torch.float64 if rows.dtype == torch.float64 else torch.float32
    x, e = rows.to(acc), codes.detach().to(acc)
    norm_x, norm_e = x.detach().norm(dim=-1, keepdim=True), e.norm(dim=-1, keepdim=True)
    tiny = torch.finfo(acc).tiny
    u, q = x.detach() / norm_x.clamp_min(tiny), e / norm_e.clamp_min(tiny)
    w = F.normalize(u + q, dim=-1)
    rotated = x - 2.0 * (x * w).sum(-1, keepdim=True) * w + 2.0 * (x * u).sum(-1, keepdim=True) * q
    scaled = rotated * (norm_e / norm_x.clamp_min(tiny))
    return torch.where(norm_x > 0, scaled, e).to(rows.dtype)


def kmeans(rows: torch.Tensor, centroids: torch.Tensor, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means from ``centroids``, built on :func:`fastvae.vq_nearest` and :func:`fastvae.vq_code_stats`.

    Each iteration assigns every row to its nearest centroid (ties to the lowest index) and moves each
    centroid to the mean of its rows; a centroid with no rows stays where it is. When
    ``torch.distributed`` is initialised the counts and sums are all-reduced, so every rank computes
    the same centroids from all ranks' rows (the starting ``centroids`` must already agree). No
    ``N x K`` matrix and no host synchronisation.

    Args:
        rows: ``(N, D)`` points; float16, bfloat16, float32 or float64.
        centroids: ``(K, D)`` starting centroids, same dtype and device.
        iters: Lloyd iterations, ``>= 0``.

    Returns:
        ``(centroids (K, D)`` in ``rows``' dtype, ``counts (K,)`` float32 (float64 for float64) of the
        last assignment, all ranks' rows counted``)``; with ``iters = 0`` the given centroids and the
        counts of their assignment.
    """
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
        raise ValueError(f"iters must be an int >= 0, got {iters!r}")
    for _ in range(iters):
        counts, sums = _assignment_statistics(rows, centroids)
        means = sums / counts.clamp(min=1).unsqueeze(1)
        centroids = torch.where(counts.unsqueeze(1) > 0, means.to(centroids.dtype), centroids)
    counts, _ = _assignment_statistics(rows, centroids)
    return centroids, counts


def _assignment_statistics(rows: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts ``(K,)`` and sums ``(K, D)`` of the rows nearest each centroid, over all ranks."""
    indices, _ = vq_nearest(rows, centroids)
    counts, sums = vq_code_stats(rows, indices, centroids.shape[0])
    if _distributed():
        dist.all_reduce(counts)
        dist.all_reduce(sums)
    return counts, sums


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

    With ``kmeans_init=True`` the codebook starts from the first training batch: ``num_codes`` distinct
    rows drawn at random (with replacement when the batch has fewer rows), then ``kmeans_iters``
    iterations of Lloyd's algorithm (:func:`kmeans`), on the rows as the search sees them (normalised
    for ``metric="cosine"``). Under ``torch.distributed`` rank 0's draw is broadcast and the
    iterations all-reduce their statistics, so every rank starts from the same codebook. The EMA count
    of each code becomes its number of rows in the last assignment (at least 1), and with EMA
    ``ema_sum = count * code``. It happens once, before the first training step's search; the buffer
    ``initialised`` (present only with ``kmeans_init``) records it, and a state dict without it (say,
    from a module without ``kmeans_init``) loads as initialised.

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
        kmeans_init: initialise the codebook by k-means on the first training batch (above).
        kmeans_iters: Lloyd iterations of that initialisation, ``>= 0``.
        codebook_dim: factorised codes (ViT-VQGAN, DAC): ``nn.Linear`` projections (with bias) from
            ``dim`` to ``codebook_dim`` before the search and back after it; the codebook, the
            search, the losses, the EMA statistics and k-means live in the ``codebook_dim`` space
            (L2-normalised there with ``metric="cosine"``). None, or ``dim``: no projections.
        gradient: how ``quantized`` passes its gradient to ``x``: ``"ste"`` (straight through, the
            identity) or ``"rotation"`` (the rotation trick, :func:`rotation_trick`: the gradient is
            rotated and rescaled as the map from ``x`` onto its code is). The losses and the codebook's
            gradient are the same either way.
        precision: ``"ieee"`` (default: exact float32 products), ``"tf32"`` (one TF32 tensor-core
            product) or ``"3xtf32"`` (three TF32 products of split operands: near float32 accuracy on
            tensor cores): how the nearest-code search multiplies float32 inputs, passed to
            :func:`fastvae.vector_quantize` (which says what each backend does). Other dtypes ignore it.

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
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        codebook_dim: int | None = None,
        gradient: str = "ste",
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
        self.codebook_dim = self.dim if codebook_dim is None else _positive_int(codebook_dim, "codebook_dim")
        self.gradient = _checks.choice(gradient, "gradient", GRADIENTS)
        if self.codebook_dim != self.dim:
            self.project_in = nn.Linear(self.dim, self.codebook_dim)
            self.project_out = nn.Linear(self.codebook_dim, self.dim)

        initial = torch.empty(num_codes, self.codebook_dim).uniform_(-1.0 / num_codes, 1.0 / num_codes)
        if ema:
            self.register_buffer("codebook", initial)
            self.register_buffer("ema_sum", initial.clone())
        else:
            self.codebook = nn.Parameter(initial)
        self.register_buffer("ema_count", torch.ones(num_codes))
        self.register_buffer("skipped_updates", torch.zeros(num_codes, dtype=torch.int64))
        if not isinstance(kmeans_init, bool):
            raise TypeError(f"kmeans_init must be a bool, got {type(kmeans_init).__name__}")
        self.kmeans_init = kmeans_init
        if isinstance(kmeans_iters, bool) or not isinstance(kmeans_iters, int) or kmeans_iters < 0:
            raise ValueError(f"kmeans_iters must be an int >= 0, got {kmeans_iters!r}")
        self.kmeans_iters = kmeans_iters
        if kmeans_init:
            self.register_buffer("initialised", torch.tensor(False))
        # Mirrors ``initialised`` on the host, so that no training step reads the buffer back.
        self._awaits_kmeans = kmeans_init

    def extra_repr(self) -> str:
        return (
            f"num_codes={self.num_codes}, dim={self.dim}, beta={self.beta}, ema={self.ema}, "
            f"decay={self.decay}, eps={self.eps}, dead_code_threshold={self.dead_code_threshold}, "
            f"metric={self.metric!r}, channel_dim={self.channel_dim}, precision={self.precision!r}, "
            f"kmeans_init={self.kmeans_init}, kmeans_iters={self.kmeans_iters}, "
            f"codebook_dim={self.codebook_dim}, gradient={self.gradient!r}"
        )

    def forward(self, x: torch.Tensor) -> VQOutput:
        """Quantise ``x`` and, in training mode, update the codebook statistics.

        Returns:
            :class:`fastvae.VQOutput` as described in the class docstring.
        """
        moved = _checks.channels_last(x, "x", self.dim, self.channel_dim)
        if self.codebook_dim != self.dim:
            moved = self.project_in(moved)
        if self.training and self._awaits_kmeans:
            self._kmeans_initialise(moved)
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
        quantized = out.quantized
        if self.gradient == "rotation":
            quantized = rotation_trick(rows, quantized.reshape(rows.shape)).reshape(quantized.shape)
        if self.codebook_dim != self.dim:
            quantized = self.project_out(quantized)
        channel_dim = self.channel_dim % x.dim()
        return out._replace(quantized=quantized.movedim(-1, channel_dim), loss=loss)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # State dicts saved before ``skipped_updates`` and ``initialised`` existed load with a zero
        # count and as initialised (they were trained).
        state_dict.setdefault(prefix + "skipped_updates", torch.zeros_like(self.skipped_updates))
        if self.kmeans_init:
            state_dict.setdefault(prefix + "initialised", torch.tensor(True))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self.kmeans_init:
            self._awaits_kmeans = not bool(self.initialised)  # one read, at load time

    @torch.no_grad()
    def _kmeans_initialise(self, moved: torch.Tensor) -> None:
        """The codebook from k-means on the batch ``moved (..., D)`` (see the class docstring)."""
        rows = moved.detach().reshape(-1, self.codebook_dim)
        if rows.shape[0] == 0:
            return
        if self.metric == "cosine":
            rows = F.normalize(rows, dim=-1)
        rows = rows.to(self.codebook.dtype)
        count = rows.shape[0]
        picks = (
            torch.randperm(count)[: self.num_codes]
            if count >= self.num_codes
            else torch.randint(count, (self.num_codes,))
        ).to(rows.device)
        start = rows[picks]
        if _distributed():
            dist.broadcast(start, src=0)
        centroids, counts = kmeans(rows, start, self.kmeans_iters)
        self.codebook.copy_(centroids)
        self.ema_count.copy_(counts.clamp(min=1).to(self.ema_count.dtype))
        if self.ema:
            self.ema_sum.copy_(centroids.to(self.ema_sum.dtype) * self.ema_count.unsqueeze(1))
        self.initialised.fill_(True)
        self._awaits_kmeans = False

    @torch.no_grad()
    def _update(self, rows: torch.Tensor, indices: torch.Tensor) -> None:
        """The EMA statistics and restarts from the searched ``rows (N, D)`` (L2-normalised for the
        cosine metric) and their code ``indices``."""
        if rows.shape[0] == 0:
            return
        counts, sums = vq_code_stats(rows, indices.reshape(-1), self.num_codes)
        self._apply_statistics(counts, sums, rows)

    @torch.no_grad()
    def _apply_statistics(
        self, counts: torch.Tensor, sums: torch.Tensor, rows: torch.Tensor, active: torch.Tensor | None = None
    ) -> None:
        """One step's update from this rank's code ``counts (K,)`` and ``sums (K, D)`` (all-reduced
        here under ``torch.distributed``); dead codes restart from ``rows (N, D)``, ``N >= 1``.
        ``active``, a 0-dim bool tensor, False leaves every buffer as it is (a stage that quantizer
        dropout skipped), without a host synchronisation."""
        if _distributed():
            dist.all_reduce(counts)
            if self.ema:
                dist.all_reduce(sums)
        new_count = self.ema_count.lerp(counts.to(self.ema_count.dtype), 1.0 - self.decay)
        finite = counts.isfinite() & new_count.isfinite()
        if active is not None:
            finite &= active  # an inactive step updates nothing, and is not counted as skipped
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
        self.skipped_updates.add_(~finite if active is None else ~finite & active)
        if self.dead_code_threshold > 0:
            self._restart_dead_codes(rows, active)

    def _restart_dead_codes(self, rows: torch.Tensor, active: torch.Tensor | None = None) -> None:
        """Restart every dead code at its own finite row of ``rows (N, D)``, drawn without replacement.

        The ``j``-th dead code (in index order) takes the ``j``-th row of a random permutation of the
        finite rows; dead codes beyond the number of finite rows stay as they are (and dead) this
        step. ``active`` False (a 0-dim bool tensor) restarts nothing. On device, no host synchronisation.
        """
        dead = self.ema_count < self.dead_code_threshold
        if active is not None:
            dead &= active
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
