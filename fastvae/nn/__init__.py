"""Modules built on the fastvae ops."""

from fastvae.nn.lfq import LFQ, LFQOutput
from fastvae.nn.vector_quantizer import VectorQuantizer

__all__ = ["LFQ", "LFQOutput", "VectorQuantizer"]
