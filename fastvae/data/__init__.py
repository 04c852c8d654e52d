"""Data for fastvae's models, all offline: procedural dSprites, moving sprites, and loaders for user data.

Every data set yields ``(x, y)``: ``x`` float32 ``(C, H, W)`` (``(D,)`` for flat vectors,
``(T, C, H, W)`` for sequences) and ``y`` a tensor: the class label (int64, 0-dim), the
ground-truth factors (dSprites: int64 ``(5,)`` factor classes; moving sprites: float32 ``(T, 5)``
factor values) or ``-1`` (int64, 0-dim) for unlabelled data. Each has ``input_shape``,
``num_classes`` (None unless ``y`` is a class label), ``labels`` and a vectorised ``batch(items)``;
see :mod:`fastvae.data.base`.

- :mod:`fastvae.data.sprites`: :func:`dsprites` / :class:`DSprites` (the 737,280-image dSprites grid,
  rendered on demand, with factor lookup for disentanglement metrics), :func:`moving_sprites` /
  :class:`MovingSprites`, and :func:`render`.
- :mod:`fastvae.data.files`: :func:`image_folder`, :func:`array_file`, :func:`mnist_idx`, and
  :func:`load`, which resolves a name or a path to one of the above.
"""

from fastvae.data.base import UNLABELLED, VAEDataset
from fastvae.data.files import (
    ArrayDataset,
    ImageFolder,
    array_file,
    image_folder,
    load,
    mnist_idx,
)
from fastvae.data.sprites import (
    DSprites,
    MovingSprites,
    dsprites,
    moving_sprites,
    render,
)

__all__ = [
    "UNLABELLED",
    "ArrayDataset",
    "DSprites",
    "ImageFolder",
    "MovingSprites",
    "VAEDataset",
    "array_file",
    "dsprites",
    "image_folder",
    "load",
    "mnist_idx",
    "moving_sprites",
    "render",
]
