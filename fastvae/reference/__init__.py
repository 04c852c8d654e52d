"""Pure-PyTorch implementations of every op: the ground truth, and the ``torch`` backend.

Each function takes the canonical layout its op module in :mod:`fastvae.ops` passes (documented per
module) and returns fresh tensors; none of them knows about autograd or backends.
"""
