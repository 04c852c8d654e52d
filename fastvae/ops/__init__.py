"""The ops: argument checks, custom-op registration, autograd formulas and backend dispatch.

One module per op family: :mod:`~fastvae.ops.gaussian` (sampling, KL, log-density),
:mod:`~fastvae.ops.iwae` (importance-weighted bounds), :mod:`~fastvae.ops.vq` (vector quantisation),
:mod:`~fastvae.ops.fsq` (finite scalar quantisation).
"""

from fastvae.ops.fsq import fsq
from fastvae.ops.gaussian import gaussian_kl, gaussian_log_prob, reparameterize, reparameterize_kl
from fastvae.ops.iwae import iwae_bound, iwae_log_weights, miwae_bound
from fastvae.ops.rvq import rvq_nearest
from fastvae.ops.vq import VQOutput, vector_quantize, vq_code_stats, vq_nearest

__all__ = [
    "VQOutput",
    "fsq",
    "gaussian_kl",
    "gaussian_log_prob",
    "iwae_bound",
    "iwae_log_weights",
    "miwae_bound",
    "reparameterize",
    "reparameterize_kl",
    "rvq_nearest",
    "vector_quantize",
    "vq_code_stats",
    "vq_nearest",
]
