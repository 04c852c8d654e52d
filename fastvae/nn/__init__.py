"""Modules built on the fastvae ops."""

from fastvae.nn.vector_quantizer import VectorQuantizer

__all__ = ["VectorQuantizer"]
