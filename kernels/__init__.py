"""Triton kernels of fastvae, installed as ``fastvae.kernels``.

One module per op family (``reparameterize``, ``gaussian_kl``, ``vq_nearest``, ...). Each holds the
``@triton.jit`` kernels first, named ``_<op>_fwd_kernel`` / ``_<op>_bwd_kernel``, then the host
functions ``<op>_fwd(...)`` / ``<op>_bwd(...)`` that choose block sizes, warps and the grid and
allocate outputs. Kernels know nothing of autograd: ``fastvae.ops`` registers the ops and calls
these host functions. The kernels arrive in a later issue.
"""
