"""``td_vae``: the temporal-difference variational auto-encoder (Gregor et al. 2018), a jumpy
state-space model of sequences trained on pairs of time points."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from fastvae import ops
from fastvae.ops._checks import check_int
from fastvae.models.base import ModelOutput, ObservationModel
from fastvae.models.nets import build_decoder, build_encoder
from fastvae.models.registry import register

__all__ = ["TDVAE", "GaussianHead"]


class GaussianHead(nn.Module):
    """A diagonal Gaussian from an input vector: ``Linear - tanh - Linear`` -> ``(mu, logvar)``.

    ``(..., inputs) -> ((..., latent_dim), (..., latent_dim))``.
    """

    def __init__(self, inputs: int, hidden: int, latent_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, 2 * latent_dim))

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The inputs are concatenated on the last dim; returns ``(mu, logvar)``."""
        mu, logvar = self.net(torch.cat(inputs, dim=-1)).chunk(2, dim=-1)
        return mu, logvar


@register("td_vae")
class TDVAE(ObservationModel):
    """TD-VAE of Gregor, Papamakarios, Besse, Buesing & Weber, "Temporal Difference Variational
    Auto-Encoder" (arXiv 1806.03107, 2018; ICLR 2019).

    **Data.** A sequence model: ``x`` is a batch of sequences ``(B, T, *input_shape)`` (``input_shape``
    is one frame's, ``(C, H, W)`` or ``(D,)``); a batch of single frames ``(B, *input_shape)`` is read
    as sequences of length 1. ``sequential = True`` tells the trainer to feed sequences
    (``fastvae.data.moving_sprites(..., seq_len=seq_len)``).

    **Model.** Frames are encoded one by one (the shared encoder, ``hidden`` features) and an LSTM
    (``belief_dim`` units) reads them in order: the belief ``b_t`` (``t = 1..T``) summarises
    ``x_1..x_t``; ``b_0`` is a learned initial belief, the state before any observation. With
    ``(mu, logvar)`` from ``Linear - tanh - Linear`` heads (:class:`GaussianHead`), all diagonal
    Gaussians over ``latent_dim``::

        p_B(z_t | b_t)                       belief distribution (filtering)
        q_S(z_t1 | z_t2, b_t1, b_t2)         smoothing posterior
        p_T(z_t2 | z_t1, dt)                 jumpy transition, dt = t2 - t1 fed in as dt / max_jump
        p_D(x_t | z_t)                       decoder (the shared decoder; Bernoulli or Gaussian)

    **Loss.** For each sequence one pair ``0 <= t1 < t2 <= T`` is drawn (``t1`` uniform in
    ``[0, T - 1]``, then ``dt = t2 - t1`` uniform in ``[1, min(max_jump, T - t1)]``), ``z_t2 ~
    p_B(. | b_t2)`` and ``z_t1 ~ q_S(. | z_t2, b_t1, b_t2)`` (reparameterised, one sample each)::

        recon      = mean_b [ -log p_D(x_t2 | z_t2) ]                                  (summed over pixels)
        kl         = mean_b [ KL(q_S(z_t1 | z_t2, b_t1, b_t2) || p_B(z_t1 | b_t1)) ]    (closed form, summed over latent dims)
        transition = mean_b [ log p_B(z_t2 | b_t2) - log p_T(z_t2 | z_t1, dt) ]        (single sample, summed over latent dims)
        loss       = recon + kl + transition

    which is the seed table's ``E[-log p_D(x_t2|z_t2) - log p_B(z_t1|b_t1) - log p_T(z_t2|z_t1) +
    log p_B(z_t2|b_t2) + log q_S(z_t1|z_t2,b_t1,b_t2)]`` with the ``z_t1`` part of the expectation
    taken in closed form (:func:`fastvae.gaussian_kl`); the other log-densities go through
    :func:`fastvae.gaussian_log_prob`, the samples through :func:`fastvae.reparameterize`.
    ``transition`` can be negative (it is a difference of log-densities).

    ``forward`` also decodes a belief sample ``z_t ~ p_B(. | b_t)`` for every ``t`` (the loss uses the
    one at ``t2``) so that ``recon`` has the shape of ``x``. It returns ``ModelOutput(recon, z, logits,
    beliefs, t1, t2, z_t1, z_t2, belief_t1, belief_t2, smoothing, transition)``: ``z (B, T, latent)``,
    ``logits (B, T, *input_shape)``, ``beliefs (B, T + 1, belief_dim)`` (``b_0..b_T``), ``t1, t2``
    int64 ``(B,)`` belief indices (the frame of ``t2`` is ``x[:, t2 - 1]``), the two samples ``(B,
    latent)``, and ``(mu, logvar)`` pairs of ``p_B(z_t1|b_t1)``, ``p_B(z_t2|b_t2)``, ``q_S`` and
    ``p_T``. ``recon`` and ``logits`` have ``x``'s shape (frames for a frame batch).

    :meth:`rollout` predicts the future: ``z ~ p_B(. | b_T)`` after the context, then ``z <- z' ~ p_T(.
    | z, jump)`` ``steps`` times, decoding each. ``sample(n)`` is a rollout of one step from the
    empty context (``b_0``): ``n`` first frames, ``(n, *input_shape)``. ``reconstruct`` decodes the
    belief means ``(B, T, *input_shape)``. There is no ``log_likelihood``.

    Simplifications: one layer of ``z`` (the paper also stacks two), MLP heads instead of the
    paper's exact parameterisation, the transition conditioned on ``dt`` so one network serves every
    jump (the paper trains on jumps of several sizes), and pairs with ``t1 = 0`` (the initial belief)
    included so that ``b_0`` and ``sample`` are trained. Sizes are small choices for 64 x 64
    moving sprites, not the paper's numbers.

    Args:
        input_shape: one frame, ``(C, H, W)`` or ``(D,)``.
        latent_dim: size of ``z``.
        seq_len: the length of the training sequences the trainer should draw (default 20, the
            moving-sprites default); ``forward`` accepts any ``T >= 1``.
        max_jump: the largest ``t2 - t1`` (default 4).
        belief_dim: LSTM units, the size of ``b_t`` (default 50).
        hidden: frame-encoding size and the heads' hidden width (default 50).
        likelihood: ``"bernoulli"`` (default) or ``"gaussian"``.
        obs_std: standard deviation of the Gaussian observation model.
    """

    #: The model reads sequences ``(B, T, *input_shape)``; ``input_shape`` is one frame's.
    sequential: ClassVar[bool] = True

    def __init__(
        self,
        input_shape: tuple[int, ...],
        latent_dim: int,
        *,
        seq_len: int = 20,
        max_jump: int = 4,
        belief_dim: int = 50,
        hidden: int = 50,
        likelihood: str = "bernoulli",
        obs_std: float = 1.0,
    ) -> None:
        super().__init__(input_shape, latent_dim, likelihood=likelihood, obs_std=obs_std)
        self.seq_len = check_int(seq_len, "seq_len", 1)
        self.max_jump = check_int(max_jump, "max_jump", 1)
        belief_dim = check_int(belief_dim, "belief_dim", 1)
        hidden = check_int(hidden, "hidden", 1)
        self.frame_encoder = build_encoder(self.input_shape, hidden)
        self.lstm = nn.LSTM(hidden, belief_dim, batch_first=True)
        self.initial_belief = nn.Parameter(torch.zeros(belief_dim))
        self.initial_cell = nn.Parameter(torch.zeros(belief_dim))
        self.belief_head = GaussianHead(belief_dim, hidden, latent_dim)
        self.smoothing_head = GaussianHead(latent_dim + 2 * belief_dim, hidden, latent_dim)
        self.transition_head = GaussianHead(latent_dim + 1, hidden, latent_dim)
        self.decoder = build_decoder(latent_dim, self.input_shape)

    # --- inputs ---------------------------------------------------------------------------------------

    def check_input(self, x: object, name: str = "x") -> torch.Tensor:
        """``x`` as a float tensor ``(B, T, *input_shape)`` (``T >= 1``) or ``(B, *input_shape)``."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
        frame = self.input_shape
        if tuple(x.shape[-len(frame):]) != frame or x.dim() not in (len(frame) + 1, len(frame) + 2) or 0 in x.shape:
            dims = ", ".join(map(str, frame))
            raise ValueError(
                f"{name} must have shape (B, T, {dims}) (sequences) or (B, {dims}) (frames) for this model, "
                f"got {tuple(x.shape)}"
            )
        return x

    def _sequences(self, x: torch.Tensor) -> torch.Tensor:
        """A checked input as sequences ``(B, T, *input_shape)``."""
        x = self.check_input(x)
        return x if x.dim() == len(self.input_shape) + 2 else x.unsqueeze(1)

    # --- the components ---------------------------------------------------------------------------------

    def beliefs(self, frames: torch.Tensor) -> torch.Tensor:
        """Beliefs ``b_0..b_T`` of sequences ``frames (B, T, *input_shape)`` (``T >= 0``): ``(B, T + 1, belief_dim)``."""
        batch, steps = frames.shape[:2]
        b0 = self.initial_belief.expand(batch, 1, -1)
        if steps == 0:
            return b0
        encoded = self.frame_encoder(frames.reshape(batch * steps, *self.input_shape)).reshape(batch, steps, -1)
        state = (self.initial_belief.expand(1, batch, -1).contiguous(), self.initial_cell.expand(1, batch, -1).contiguous())
        beliefs, _ = self.lstm(encoded, state)
        return torch.cat([b0.to(beliefs.dtype), beliefs], dim=1)

    def belief_distribution(self, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``p_B(z | b)``: ``b (..., belief_dim)`` -> ``(mu, logvar)``, each ``(..., latent_dim)``."""
        return self.belief_head(b)

    def smoothing_distribution(
        self, z_t2: torch.Tensor, b_t1: torch.Tensor, b_t2: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``q_S(z_t1 | z_t2, b_t1, b_t2)``: ``(B, latent)``, ``(B, belief)``, ``(B, belief)`` -> ``(mu, logvar)``."""
        return self.smoothing_head(z_t2, b_t1, b_t2)

    def transition_distribution(self, z_t1: torch.Tensor, jump: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``p_T(z_t2 | z_t1, dt)``: ``z_t1 (B, latent)``, ``jump`` ``dt`` (``(B,)``) -> ``(mu, logvar)``."""
        dt = (jump.to(z_t1.dtype) / self.max_jump).reshape(-1, 1)
        return self.transition_head(z_t1, dt)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``p_D``'s output (logits or mean): ``z (N, latent)`` -> ``(N, *input_shape)``."""
        return self.decoder(z)

    def sample_pairs(
        self, batch: int, steps: int, *, device: torch.device | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One pair of belief indices per sequence: ``t1`` uniform in ``[0, steps - 1]``, then ``t2 - t1``
        uniform in ``[1, min(max_jump, steps - t1)]``. Returns int64 ``(t1, t2)``, each ``(batch,)``."""
        t1 = torch.randint(0, steps, (batch,), generator=generator)
        longest = torch.clamp(steps - t1, max=self.max_jump)
        jump = 1 + (torch.rand(batch, generator=generator) * longest).long().clamp(max=longest - 1)
        device = self.device if device is None else device
        return t1.to(device), (t1 + jump).to(device)

    # --- the model interface ----------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> ModelOutput:
        """Beliefs, a belief sample per step decoded, one ``(t1, t2)`` pair per sequence with its samples."""
        frames = self._sequences(x)
        batch, steps = frames.shape[:2]
        beliefs = self.beliefs(frames)
        mu_b, logvar_b = self.belief_distribution(beliefs[:, 1:])
        z = ops.reparameterize(mu_b, logvar_b)
        logits = self.decode(z.reshape(batch * steps, self.latent_dim)).reshape(frames.shape)
        t1, t2 = self.sample_pairs(batch, steps, device=frames.device)
        rows = torch.arange(batch, device=frames.device)
        b_t1, b_t2 = beliefs[rows, t1], beliefs[rows, t2]
        z_t2 = z[rows, t2 - 1]
        mu_s, logvar_s = self.smoothing_distribution(z_t2, b_t1, b_t2)
        z_t1 = ops.reparameterize(mu_s, logvar_s)
        logits = logits.reshape(x.shape)
        return ModelOutput(
            recon=self.mean(logits), z=z, logits=logits, beliefs=beliefs, t1=t1, t2=t2, z_t1=z_t1, z_t2=z_t2,
            belief_t1=self.belief_distribution(b_t1), belief_t2=(mu_b[rows, t2 - 1], logvar_b[rows, t2 - 1]),
            smoothing=(mu_s, logvar_s), transition=self.transition_distribution(z_t1, t2 - t1),
        )

    def loss(
        self, x: torch.Tensor, out: ModelOutput, y: torch.Tensor | None = None, step: int | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"loss": recon + kl + transition, "recon", "kl", "transition"}``, 0-dim float32 (``step`` unused)."""
        frames = self._sequences(x)
        rows = torch.arange(frames.shape[0], device=frames.device)
        frame_t2 = frames[rows, out.t2 - 1]
        logits_t2 = out.logits.reshape(frames.shape)[rows, out.t2 - 1]
        recon = self.reconstruction_nll(frame_t2, logits_t2).mean()
        mu_s, logvar_s = (t.float() for t in out.smoothing)
        mu_1, logvar_1 = (t.float() for t in out.belief_t1)
        kl = ops.gaussian_kl(mu_s, logvar_s, mu_1, logvar_1).mean()
        z_t2 = out.z_t2.float()
        log_belief = ops.gaussian_log_prob(z_t2, *(t.float() for t in out.belief_t2))
        log_transition = ops.gaussian_log_prob(z_t2, *(t.float() for t in out.transition))
        transition = (log_belief - log_transition).mean()
        return {"loss": recon + kl + transition, "recon": recon, "kl": kl, "transition": transition}

    @torch.no_grad()
    def rollout(self, x_context: torch.Tensor, steps: int, *, jump: int = 1) -> torch.Tensor:
        """Predicted future frames after a context: ``x_context (B, T, *input_shape)`` (``T >= 0``) ->
        ``(B, steps, *input_shape)`` in data space.

        ``z ~ p_B(. | b_T)``, then ``steps`` times ``z <- z' ~ p_T(. | z, jump)`` and decode ``z'``; frame
        ``k`` is the prediction ``(k + 1) * jump`` frames past the context.
        """
        check_int(steps, "steps", 1)
        if isinstance(jump, bool) or not isinstance(jump, int) or not 1 <= jump <= self.max_jump:
            raise ValueError(f"jump must be an int in [1, max_jump={self.max_jump}], got {jump!r}")
        if not isinstance(x_context, torch.Tensor) or x_context.dim() != len(self.input_shape) + 2 or tuple(
            x_context.shape[2:]
        ) != self.input_shape:
            shape = getattr(x_context, "shape", type(x_context).__name__)
            dims = ", ".join(map(str, self.input_shape))
            raise ValueError(f"x_context must be a tensor of shape (B, T, {dims}), got {shape}")
        batch = x_context.shape[0]
        b = self.beliefs(x_context)[:, -1]
        z = ops.reparameterize(*self.belief_distribution(b))
        jumps = torch.full((batch,), jump, device=z.device)
        frames = []
        for _ in range(steps):
            z = ops.reparameterize(*self.transition_distribution(z, jumps))
            frames.append(self.mean(self.decode(z)))
        return torch.stack(frames, dim=1)

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` first frames: a one-step rollout from the initial belief ``b_0``, ``(n, *input_shape)``."""
        empty = torch.zeros(n, 0, *self.input_shape, device=self.device)
        return self.rollout(empty, 1)[:, 0]

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The belief means ``E[z_t | b_t]`` decoded at every step, ``x``'s shape, in data space."""
        frames = self._sequences(x)
        mu, _ = self.belief_distribution(self.beliefs(frames)[:, 1:])
        return self.mean(self.decode(mu.reshape(-1, self.latent_dim))).reshape(x.shape)
