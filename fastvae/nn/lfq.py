"""LFQ: lookup-free quantisation (Yu et al. 2023, MAGVIT-v2) with its entropy loss in O(2^D) memory.

Each of the ``D`` channels is quantised on its own to ``-1`` or ``+1``, so the implicit codebook is
``{-1, +1}^D`` with ``2^D`` codes. The entropy loss needs the code probabilities
``p(c | x) = softmax_c(2 tau <x, c>)`` over all ``2^D`` codes; vector-quantize-pytorch builds them as
an ``N x 2^D`` matrix. Here neither term does:

* The softmax factorises per bit: ``2 tau <x, c> = sum_d 2 tau x_d c_d``, so
  ``p(c | x) = prod_d p_d(c_d)`` with ``p_d(+1) = sigmoid(4 tau x_d)``. The per-sample entropy is then
  ``sum_d H_b(sigmoid(4 tau x_d))``, ``O(N D)``.
* The batch-mean distribution ``q(c) = mean_n p(c | x_n)`` splits the ``D`` bits into the first
  ``D_hi = D // 2`` (the high bits of the index) and the other ``D_lo``: per row,
  ``p(c | x_n) = P_hi[n, c_hi] P_lo[n, c_lo]`` with ``P_hi (N, 2^D_hi)`` and ``P_lo (N, 2^D_lo)``
  the products of the per-bit probabilities, so ``q = P_hi^T P_lo / N`` as a ``(2^D_hi, 2^D_lo)``
  matrix. It is accumulated over chunks of rows, and the backward pass recomputes each chunk's
  ``P_hi`` and ``P_lo`` (:class:`_CodebookEntropy`), so forward and backward hold
  ``O(2^D + chunk 2^(D/2) + N D)`` elements, never ``N x 2^D``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from fastvae.ops import _checks

__all__ = ["LFQ", "LFQOutput", "MAX_DIM"]

#: The largest ``dim``: the codebook entropy is exact over ``2^dim`` codes, whose distribution is held
#: in memory (``2^20`` float32 values are 4 MiB; every further bit doubles it and the work).
MAX_DIM = 20

#: Elements of the per-chunk probability matrices ``P_hi`` and ``P_lo`` together: a chunk holds
#: ``_CHUNK_ELEMENTS // (2^D_hi + 2^D_lo)`` rows (16 MiB of float32, whatever ``N``).
_CHUNK_ELEMENTS = 2**22

#: The dtypes :meth:`LFQ.indices_to_codes` accepts.
_INTEGER_DTYPES = frozenset((torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64))


class LFQOutput(NamedTuple):
    """What :class:`LFQ` returns. The losses are 0-dim, in float32 (float64 for a float64 input).

    Attributes:
        quantized: ``x``'s shape and dtype; ``sign(x)`` in ``{-1, +1}`` (``x > 0`` gives ``+1``,
            anything else ``-1``), with the straight-through gradient (``d quantized / dx = 1``).
        indices: int64, ``x``'s shape without ``channel_dim``: the code index
            ``sum_d [x_d > 0] 2^(D - 1 - d)`` (the first channel is the most significant bit).
        loss: ``entropy_weight * entropy_loss + commitment_weight * commitment_loss``.
        entropy_loss: ``per_sample_entropy - diversity_gamma * codebook_entropy``.
        commitment_loss: ``mean over the N D elements of (x - sg[quantized])^2``
            (``F.mse_loss(x, quantized.detach())``).
        per_sample_entropy: ``mean_n H(p(. | x_n))`` in nats, where
            ``p(c | x) = softmax_c(2 inv_temperature <x, c>)`` over ``c in {-1, +1}^D``.
        codebook_entropy: ``H(q)`` in nats of the batch-mean distribution
            ``q(c) = mean_n p(c | x_n)``, with ``0 log 0 = 0`` (at most ``D log 2``).
    """

    quantized: torch.Tensor
    indices: torch.Tensor
    loss: torch.Tensor
    entropy_loss: torch.Tensor
    commitment_loss: torch.Tensor
    per_sample_entropy: torch.Tensor
    codebook_entropy: torch.Tensor


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _finite(value: object, name: str) -> float:
    """``value`` as a finite float ``>= 0``."""
    number = _checks.number(value, name, low=0.0)
    if number == float("inf"):
        raise ValueError(f"{name} must be finite, got inf")
    return number


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _bit_columns(num_bits: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(2^num_bits, 2 num_bits)``: row ``c`` holds the bits of ``c`` as 0 or 1, most significant first,
    then their complements ``1 - bit``."""
    shifts = torch.arange(num_bits - 1, -1, -1, device=device)
    bits = ((torch.arange(2**num_bits, device=device)[:, None] >> shifts) & 1).to(dtype)
    return torch.cat((bits, 1 - bits), dim=1)


def _half_gradient(z: torch.Tensor, weighted: torch.Tensor, bit_columns: torch.Tensor) -> torch.Tensor:
    """``(n, k)``: ``sum_c weighted[n, c] d log p(c) / dz[n, d]`` for the codes ``c`` of ``k`` bits with
    bit logits ``z (n, k)``, i.e. ``sigmoid(-z_d)`` times the sum over codes with bit ``d`` set minus
    ``sigmoid(z_d)`` times the sum over the others (two non-negative sums: no cancellation of large
    terms where a bit is nearly certain). ``bit_columns`` is :func:`_bit_columns` of ``k``."""
    sums = weighted @ bit_columns
    return torch.sigmoid(-z) * sums[:, : z.shape[1]] - torch.sigmoid(z) * sums[:, z.shape[1] :]


def _code_probabilities(z: torch.Tensor) -> torch.Tensor:
    """``(n, 2^k)`` probabilities of every code of ``k`` bits, from the bit logits ``z (n, k)``.

    Code ``c`` (bits ``b_0 .. b_{k-1}``, ``b_0`` most significant) has probability
    ``prod_d sigmoid(z_d)^b_d sigmoid(-z_d)^(1 - b_d)``, built as a product (no ``exp`` of a sum of
    logs, so each entry has a relative error of at most ``k`` roundings).
    """
    positive, negative = torch.sigmoid(z), torch.sigmoid(-z)
    probabilities = z.new_ones(z.shape[0], 1)
    for d in range(z.shape[1]):
        pair = (probabilities * negative[:, d : d + 1], probabilities * positive[:, d : d + 1])
        probabilities = torch.stack(pair, dim=-1).reshape(z.shape[0], -1)
    return probabilities


def _per_sample_entropy(z: torch.Tensor) -> torch.Tensor:
    """``mean_n sum_d H_b(sigmoid(z[n, d]))`` for bit logits ``z (N, D)``.

    With ``a = |z|``, ``H_b(sigmoid(z)) = softplus(-a) + a sigmoid(-a)``: two non-negative terms, so
    no cancellation where the bit is nearly certain.
    """
    a = z.abs()
    return (F.softplus(-a) + a * torch.sigmoid(-a)).sum(-1).mean()


class _CodebookEntropy(torch.autograd.Function):
    """``H(mean_n p(. | x_n))`` over ``2^D`` codes, chunked over rows; backward recomputes each chunk.

    ``forward(rows (N, D), scale, chunk_rows, sync)``: the bit logits are ``z = scale * rows``
    (``scale = 4 inv_temperature``). With ``sync`` the summed accumulation and ``N`` are all-reduced
    over the ranks of ``torch.distributed``, so ``q`` is the mean over every rank's rows; backward then
    all-reduces the incoming gradient, the autograd of that sum: each rank's rows get the gradient of
    ``sum over ranks of the loss``, which DDP's averaging turns into the gradient of one process fed
    every rank's rows.

    Backward: with ``g_c = dH / dq_c = -log q_c - 1`` (the ``-1`` drops out, since
    ``sum_c p(c | x) = 1``) and ``d log p(c | x) / dz_d = sigmoid(-z_d)`` where bit ``d`` of ``c`` is
    set, ``-sigmoid(z_d)`` where not, ``dH / dz_nd = (1 / N) sum_c g_c p(c | x_n) d log p(c | x_n) / dz_nd``.
    For a high bit the sum over ``c = (c_hi, c_lo)`` is one over ``c_hi`` of
    ``P_hi[n, c_hi] (sum_{c_lo} g[c_hi, c_lo] P_lo[n, c_lo])`` (a matmul), and likewise for a low bit.
    Codes whose ``q_c`` underflowed to 0 have ``p(c | x_n) = 0`` in every row, so their ``g_c`` (taken
    at the smallest normal number) adds nothing.
    """

    @staticmethod
    def forward(ctx, rows: torch.Tensor, scale: float, chunk_rows: int, sync: bool) -> torch.Tensor:
        num_rows, dim = rows.shape
        high_bits = dim // 2
        totals = rows.new_zeros(2**dim + 1)  # the summed probabilities, then the row count
        summed = totals[:-1].view(2**high_bits, 2 ** (dim - high_bits))
        for start in range(0, num_rows, chunk_rows):
            z = scale * rows[start : start + chunk_rows]
            summed.addmm_(_code_probabilities(z[:, :high_bits]).T, _code_probabilities(z[:, high_bits:]))
        totals[-1] = num_rows
        if sync:
            dist.all_reduce(totals)
        mean = summed / totals[-1]
        entropy = -torch.special.xlogy(mean, mean).sum()
        neg_log_mean = -mean.clamp_min(torch.finfo(mean.dtype).tiny).log()
        ctx.save_for_backward(rows, neg_log_mean, totals[-1].clone())
        ctx.scale, ctx.chunk_rows, ctx.sync = scale, chunk_rows, sync
        return entropy

    @staticmethod
    def backward(ctx, grad_entropy: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        rows, neg_log_mean, count = ctx.saved_tensors
        if ctx.sync:
            grad_entropy = grad_entropy.clone()
            dist.all_reduce(grad_entropy)
        num_rows, dim = rows.shape
        high_bits = dim // 2
        columns_high = _bit_columns(high_bits, rows.dtype, rows.device)
        columns_low = _bit_columns(dim - high_bits, rows.dtype, rows.device)
        grad_rows = torch.empty_like(rows)
        for start in range(0, num_rows, ctx.chunk_rows):
            z = ctx.scale * rows[start : start + ctx.chunk_rows]
            z_high, z_low = z[:, :high_bits], z[:, high_bits:]
            p_high, p_low = _code_probabilities(z_high), _code_probabilities(z_low)
            # Per code of one half: p(c | x_n) times g_c summed with the other half's probabilities.
            grad_high = _half_gradient(z_high, (p_low @ neg_log_mean.T) * p_high, columns_high)
            grad_low = _half_gradient(z_low, (p_high @ neg_log_mean) * p_low, columns_low)
            grad_rows[start : start + ctx.chunk_rows] = torch.cat((grad_high, grad_low), dim=1)
        return grad_rows * (grad_entropy / count * ctx.scale), None, None, None


def _chunk_rows(dim: int) -> int:
    """Rows per chunk of :class:`_CodebookEntropy` for ``dim`` bits: ``_CHUNK_ELEMENTS`` in all."""
    high_bits = dim // 2
    return max(1, _CHUNK_ELEMENTS // (2**high_bits + 2 ** (dim - high_bits)))


class LFQ(nn.Module):
    """Lookup-free quantisation (Yu et al. 2023, "Language Model Beats Diffusion", MAGVIT-v2).

    Every channel of ``x`` is quantised to ``-1`` or ``+1`` with a straight-through gradient; the
    ``D`` signs form one of ``codebook_size = 2^D`` codes, with no codebook to look up. Forward
    takes ``x`` with ``D = dim`` channels along ``channel_dim`` (``N`` vectors in all) and returns
    :class:`LFQOutput`. With ``tau = inv_temperature``:

    * ``quantized = sign(x)`` (``+1`` where ``x > 0``, else ``-1``), in ``x``'s dtype, gradient 1;
      ``indices = sum_d [x_d > 0] 2^(D - 1 - d)`` (first channel most significant), int64.
    * Code probabilities ``p(c | x) = softmax_c(2 tau <x, c>)`` over ``c in {-1, +1}^D``.
    * ``per_sample_entropy = mean_n H(p(. | x_n))``, computed as
      ``mean_n sum_d H_b(sigmoid(4 tau x_nd))`` (the softmax is a product of per-bit sigmoids).
    * ``codebook_entropy = H(q)``, ``q(c) = mean_n p(c | x_n)``, exact over the ``2^D`` codes in
      ``O(2^D)`` memory (module docstring), ``0 log 0 = 0``. Entropies in nats.
    * ``entropy_loss = per_sample_entropy - diversity_gamma * codebook_entropy``.
    * ``commitment_loss = mean over the N D elements of (x - sg[sign(x)])^2``.
    * ``loss = entropy_weight * entropy_loss + commitment_weight * commitment_loss``.

    The entropies and losses are computed in float32 (float64 for float64 input) and returned so.
    An empty input (``N = 0``) gives NaN losses, means over no rows.

    Differences from vector-quantize-pytorch's ``LFQ`` (same ``quantized`` and ``indices``):

    * Its entropies read ``log(max(p, 1e-5))``; here ``log p`` is exact, so codes of probability
      under ``1e-5`` (common at ``tau = 100``) count at their true ``-p log p``.
    * In eval mode it returns zero losses and ``quantized`` without a gradient; here eval mode
      computes the same outputs as training mode (run it under ``torch.no_grad()`` for inference).
    * Its ``quantized`` in training mode is ``x + (sign(x) - x).detach()``, which rounds away from
      ``+-1`` for large ``|x|`` (``x = 1e8`` gives 0 in float32); here it is exactly ``+-1``.
    * Its ``commitment_loss_weight`` defaults to 0; ``commitment_weight`` here to 0.25.
    * With ``torch.distributed`` initialised, it averages the ranks' batch-mean distributions with
      equal weights; here, in training mode, ``q`` is the mean over every rank's rows (the summed
      probabilities and the row counts are all-reduced in one call), so every rank computes the same
      ``codebook_entropy``, equal to one process fed all the ranks' rows; backward all-reduces the
      gradient of that term, so after DDP's gradient averaging the whole loss trains as that one
      process would (for equal per-rank batches). The per-sample entropy and the commitment loss are
      over the rank's own rows. In eval mode each rank uses only its own rows (no collective, so
      evaluating on one rank never waits for the others). Every rank must call forward, and
      backward, in training mode.

    Args:
        dim: ``D``, the number of channels and bits, in ``[1, MAX_DIM = 20]``.
        entropy_weight: weight of ``entropy_loss`` in ``loss``, ``>= 0`` (the peer's 0.1).
        commitment_weight: weight of ``commitment_loss`` in ``loss``, ``>= 0``.
        diversity_gamma: weight of the codebook entropy in ``entropy_loss``, ``>= 0``.
        inv_temperature: ``tau > 0`` of the code probabilities (the peer's forward default, 100).
        channel_dim: the input dim that holds the ``D`` channels.

    Shapes:
        input ``x``: any shape with ``D`` along ``channel_dim``; float16, bfloat16, float32 or float64.
        Output: :class:`LFQOutput`, ``quantized`` in ``x``'s layout, ``indices`` of ``x``'s shape
        without ``channel_dim``, 0-dim losses.

    Raises:
        TypeError: a non-int ``dim`` or ``channel_dim``, a non-number weight or temperature; in
            forward, a non-floating ``x``.
        ValueError: ``dim`` outside ``[1, 20]``, a negative, NaN or infinite weight, a temperature that
            is not positive and finite; in forward, ``channel_dim`` out of range or ``x`` without ``D``
            channels there.
    """

    def __init__(
        self,
        dim: int,
        *,
        entropy_weight: float = 0.1,
        commitment_weight: float = 0.25,
        diversity_gamma: float = 1.0,
        inv_temperature: float = 100.0,
        channel_dim: int = -1,
    ) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"dim must be an int, got {type(dim).__name__}")
        if not 1 <= dim <= MAX_DIM:
            raise ValueError(
                f"dim must be in [1, {MAX_DIM}] (the codebook entropy is exact over 2**dim codes), got {dim}"
            )
        self.dim = dim
        self.codebook_size = 2**dim
        self.entropy_weight = _finite(entropy_weight, "entropy_weight")
        self.commitment_weight = _finite(commitment_weight, "commitment_weight")
        self.diversity_gamma = _finite(diversity_gamma, "diversity_gamma")
        self.inv_temperature = _finite(inv_temperature, "inv_temperature")
        if self.inv_temperature == 0.0:
            raise ValueError("inv_temperature must be > 0, got 0")
        if isinstance(channel_dim, bool) or not isinstance(channel_dim, int):
            raise TypeError(f"channel_dim must be an int, got {type(channel_dim).__name__}")
        self.channel_dim = channel_dim

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, entropy_weight={self.entropy_weight}, commitment_weight={self.commitment_weight}, "
            f"diversity_gamma={self.diversity_gamma}, inv_temperature={self.inv_temperature}, "
            f"channel_dim={self.channel_dim}"
        )

    def forward(self, x: torch.Tensor) -> LFQOutput:
        """Quantise ``x`` (``D`` channels along ``channel_dim``) and compute the losses.

        Returns:
            :class:`LFQOutput` as described in the class docstring.
        """
        moved = _checks.channels_last(x, "x", self.dim, self.channel_dim)
        positive = moved > 0
        signs = torch.where(positive, moved.new_ones(()), moved.new_full((), -1.0))
        # Exactly +-1 (x - x.detach() is 0), with the gradient of x.
        quantized = signs + (moved - moved.detach())
        shifts = torch.arange(self.dim - 1, -1, -1, device=x.device)
        indices = (positive.to(torch.int64) << shifts).sum(-1)

        acc = _accumulation_dtype(x.dtype)
        rows = moved.reshape(-1, self.dim).to(acc)
        scale = 4.0 * self.inv_temperature
        per_sample_entropy = _per_sample_entropy(scale * rows)
        sync = self.training and _distributed()
        codebook_entropy = _CodebookEntropy.apply(rows, scale, _chunk_rows(self.dim), sync)
        entropy_loss = per_sample_entropy - self.diversity_gamma * codebook_entropy
        commitment_loss = F.mse_loss(rows, signs.reshape(-1, self.dim).to(acc))
        loss = self.entropy_weight * entropy_loss + self.commitment_weight * commitment_loss
        return LFQOutput(
            quantized=quantized.movedim(-1, self.channel_dim % x.dim()),
            indices=indices,
            loss=loss,
            entropy_loss=entropy_loss,
            commitment_loss=commitment_loss,
            per_sample_entropy=per_sample_entropy,
            codebook_entropy=codebook_entropy,
        )

    def indices_to_codes(self, indices: torch.Tensor, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The codes in ``{-1, +1}^D`` of ``indices``, laid out as :meth:`forward`'s ``quantized``.

        Args:
            indices: integer tensor of code indices in ``[0, codebook_size)``, any shape ``S`` (bits
                above ``D`` are not read).
            dtype: the floating dtype of the codes.

        Returns:
            ``S + (D,)`` with the ``D`` channels moved to ``channel_dim`` (of a tensor with
            ``len(S) + 1`` dims): bit ``D - 1 - d`` of the index gives channel ``d`` as ``+1`` (set)
            or ``-1``.

        Raises:
            TypeError: non-integer ``indices`` or a non-floating ``dtype``.
            ValueError: ``channel_dim`` out of range for ``len(S) + 1`` dims.
        """
        if not isinstance(indices, torch.Tensor) or indices.dtype not in _INTEGER_DTYPES:
            got = indices.dtype if isinstance(indices, torch.Tensor) else type(indices).__name__
            raise TypeError(f"indices must be an integer tensor, got {got}")
        if dtype not in _checks.FLOAT_DTYPE_SET:
            raise TypeError(f"dtype must be float16, bfloat16, float32 or float64, got {dtype}")
        channel_dim = _checks.dim_index(self.channel_dim, "channel_dim", indices.dim() + 1)
        shifts = torch.arange(self.dim - 1, -1, -1, device=indices.device)
        bits = (indices.to(torch.int64)[..., None] >> shifts) & 1
        return (2 * bits - 1).to(dtype).movedim(-1, channel_dim)
