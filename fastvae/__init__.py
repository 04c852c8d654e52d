"""fastvae: fused Triton and CUDA kernels for variational autoencoders, as PyTorch autograd ops.

The whole public API is re-exported here; see README.md for the table.
"""

from fastvae import data, metrics, models, nn
from fastvae.backend import (
    BackendUnavailableError,
    available_backends,
    set_backend,
    use_backend,
)
from fastvae.ops import (
    VQOutput,
    fsq,
    gaussian_kl,
    gaussian_log_prob,
    iwae_bound,
    iwae_log_weights,
    miwae_bound,
    reparameterize,
    reparameterize_kl,
    rvq_nearest,
    vector_quantize,
    vq_code_stats,
    vq_nearest,
)

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "VQOutput",
    "available_backends",
    "data",
    "fsq",
    "gaussian_kl",
    "gaussian_log_prob",
    "iwae_bound",
    "iwae_log_weights",
    "metrics",
    "miwae_bound",
    "models",
    "nn",
    "reparameterize",
    "reparameterize_kl",
    "rvq_nearest",
    "set_backend",
    "use_backend",
    "vector_quantize",
    "vq_code_stats",
    "vq_nearest",
]
