"""A short Adam run of a zoo model on dSprites, for the training tests of the VQ models."""

from __future__ import annotations

import torch

from fastvae.models.base import VAEModel


def train_steps(model: VAEModel, data, *, steps: int, lr: float, batch: int = 16) -> tuple[list[float], list[float]]:
    """``steps`` Adam steps of ``model`` on batches of ``batch`` images drawn from ``data`` (a dSprites
    set; draws seeded with 0). Returns each step's ``loss`` and ``recon`` terms as floats."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(0)
    losses, recons = [], []
    for step in range(steps):
        x, _ = data.batch(torch.randint(len(data), (batch,), generator=generator))
        terms = model.loss(x, model(x), step=step)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        losses.append(terms["loss"].item())
        recons.append(terms["recon"].item())
    return losses, recons
