"""Modules built on the fastvae ops."""

from fastvae.nn.fsq import FSQ, FSQOutput
from fastvae.nn.lfq import LFQ, LFQOutput
from fastvae.nn.residual_vq import ResidualVQ
from fastvae.nn.vector_quantizer import VectorQuantizer

__all__ = ["FSQ", "FSQOutput", "LFQ", "LFQOutput", "ResidualVQ", "VectorQuantizer"]
