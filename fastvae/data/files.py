"""Loaders for the user's own data: image folders, ``.npy``/``.npz`` arrays, MNIST IDX files; ``load``.

Every loader returns a :class:`~fastvae.data.base.VAEDataset`: items ``(x, y)`` with ``x`` float32
``(C, H, W)`` (or ``(D,)`` for flat vectors) in ``[0, 1]`` for 8-bit sources, and ``y`` the int64
class label or ``-1`` when there is none. A missing file raises ``FileNotFoundError`` naming it;
content that cannot be used raises ``ValueError`` naming the file and saying what was expected.

Pillow is needed for image folders and numpy for array files (the ``data`` extra); both are imported
when used.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch

from fastvae.data.base import UNLABELLED, VAEDataset, item_positions
from fastvae.data.sprites import dsprites, moving_sprites

__all__ = ["ArrayDataset", "ImageFolder", "array_file", "image_folder", "load", "mnist_idx"]

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
#: In an ``.npz`` without ``key``, the data array is the first of these present, ...
NPZ_DATA_KEYS: tuple[str, ...] = ("x", "images", "data", "arr_0")
#: ... else the only array not named as labels; labels are the first of these present.
NPZ_LABEL_KEYS: tuple[str, ...] = ("y", "labels")
IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801
_CHANNEL_COUNTS = (1, 3, 4)
# What numpy raises for a file that is not an .npy/.npz of plain arrays (ValueError: pickled objects).
_NUMPY_READ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile)


def _existing(path: str | os.PathLike[str], name: str) -> Path:
    """``path`` as a Path; ``FileNotFoundError`` naming it (as argument ``name``) when it does not exist."""
    resolved = Path(path)
    if not resolved.exists():
        raise FileNotFoundError(f"{name}: no such file or directory: '{resolved}'")
    return resolved


def _check_labels(labels: torch.Tensor, count: int, source: str) -> torch.Tensor:
    """``labels`` as int64 ``(count,)`` with values >= 0; ``ValueError`` naming ``source`` otherwise."""
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"{source}: labels must be integers, got dtype {labels.dtype}")
    if tuple(labels.shape) != (count,):
        raise ValueError(f"{source}: labels must have shape ({count},) (one per item), got {tuple(labels.shape)}")
    labels = labels.to(torch.int64)
    if count and int(labels.min()) < 0:
        raise ValueError(f"{source}: labels must be >= 0, got minimum {int(labels.min())}")
    return labels


class ArrayDataset(VAEDataset):
    """Items of an in-memory tensor, with optional class labels.

    Args:
        data: ``(N, D)`` flat vectors or ``(N, C, H, W)`` images; uint8 (scaled by 1/255 when read),
            bool (read as 0/1) or floating (read as float32, values as they are). uint8 and bool
            stay in memory as one byte per value.
        labels: int ``(N,)`` class labels >= 0, or None. ``num_classes`` is ``max(labels) + 1``.
        source: what the data came from, for error messages.

    Items: ``(x float32 (D,) or (C, H, W), y int64 0-dim)``, ``y = -1`` without labels.
    """

    def __init__(self, data: torch.Tensor, labels: torch.Tensor | None = None, *, source: str = "data") -> None:
        if data.dim() not in (2, 4):
            raise ValueError(f"{source}: data must have shape (N, D) or (N, C, H, W), got {tuple(data.shape)}")
        if data.shape[0] == 0:
            raise ValueError(f"{source}: data holds no items (shape {tuple(data.shape)})")
        if data.dtype == torch.uint8:
            self._divisor: float | None = 255.0
        elif data.dtype == torch.bool:
            data, self._divisor = data.to(torch.uint8), 1.0
        elif data.dtype.is_floating_point:
            data, self._divisor = data.float(), None
        else:
            raise ValueError(f"{source}: data must be uint8, bool or floating, got {data.dtype}")
        self.data = data
        self.input_shape = tuple(data.shape[1:])
        self.labels = None if labels is None else _check_labels(labels, data.shape[0], source)
        self.num_classes = None if self.labels is None else int(self.labels.max()) + 1
        self.source = source

    def __len__(self) -> int:
        return self.data.shape[0]

    def batch(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Items at positions ``items`` (int ``(B,)``): ``x`` float32 ``(B, *input_shape)``, ``y`` int64 ``(B,)``."""
        positions = item_positions(items, len(self))
        x = self.data[positions].float()
        if self._divisor is not None:
            x = x / self._divisor
        if self.labels is None:
            return x, torch.full((positions.numel(),), UNLABELLED, dtype=torch.int64)
        return x, self.labels[positions]


# --- image folders -----------------------------------------------------------------------------


class ImageFolder(VAEDataset):
    """Images decoded from ``files`` when an item is read; built by :func:`image_folder`.

    Args:
        files: the image files, one per item, in item order.
        labels: int64 ``(len(files),)`` class labels, or None.
        classes: the class names (``labels`` index them), or None.
        size: resize every image to ``size x size``; None keeps sizes, which must all be the first's.
        grayscale: one channel (``L``) instead of three (``RGB``).
        root: the folder, for messages.
    """

    def __init__(
        self,
        files: list[Path],
        labels: torch.Tensor | None,
        classes: list[str] | None,
        *,
        size: int | None,
        grayscale: bool,
        root: Path,
    ) -> None:
        self.files = files
        self.labels = labels
        self.classes = classes
        self.num_classes = None if classes is None else len(classes)
        self.size = size
        self.grayscale = grayscale
        self.root = root
        channels = 1 if grayscale else 3
        if size is None:
            with self._open(files[0]) as first:
                width, height = first.size
        else:
            width = height = size
        self.input_shape = (channels, height, width)

    def __len__(self) -> int:
        return len(self.files)

    @staticmethod
    def _open(file: Path) -> Any:
        from PIL import Image, UnidentifiedImageError

        try:
            return Image.open(file)
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"{file}: not a readable image ({error})") from None

    def read(self, position: int) -> torch.Tensor:
        """The image at ``position``: float32 ``input_shape`` in ``[0, 1]`` (first frame of a GIF)."""
        from PIL import Image

        file = self.files[position]
        with self._open(file) as image:
            try:
                if image.mode == "P":  # palette, possibly with transparency: through RGBA, alpha dropped
                    image = image.convert("RGBA")
                image = image.convert("L" if self.grayscale else "RGB")
                if self.size is not None:
                    image = image.resize((self.size, self.size), Image.Resampling.BILINEAR)
                pixels = image.tobytes()
            except OSError as error:
                raise ValueError(f"{file}: not a readable image ({error})") from None
        channels, height, width = self.input_shape
        if image.size != (width, height):
            raise ValueError(
                f"{file}: image is {image.size[0]} x {image.size[1]} but the folder's first image is "
                f"{width} x {height}; pass size= to resize all images to size x size"
            )
        array = torch.frombuffer(bytearray(pixels), dtype=torch.uint8).view(height, width, channels)
        return array.permute(2, 0, 1).float() / 255.0

    def batch(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images at positions ``items`` (int ``(B,)``): ``x`` float32 ``(B, C, H, W)``, ``y`` int64 ``(B,)``."""
        positions = item_positions(items, len(self))
        images = [self.read(int(position)) for position in positions]
        x = torch.stack(images) if images else torch.empty(0, *self.input_shape)
        if self.labels is None:
            return x, torch.full((positions.numel(),), UNLABELLED, dtype=torch.int64)
        return x, self.labels[positions]


def image_folder(path: str | os.PathLike[str], *, size: int | None = None, grayscale: bool = False) -> ImageFolder:
    """The images under directory ``path``, searched recursively, in sorted path order.

    Files with suffix .png, .jpg, .jpeg, .bmp or .gif (any case) are images; others are ignored.
    Images are decoded when an item is read, converted to RGB (alpha dropped) or, with
    ``grayscale``, to one channel, and resized to ``size x size`` (bilinear, aspect ratio not kept)
    when ``size`` is given; without ``size`` all images must have the first one's size.

    Labels: when no image lies directly in ``path`` and the images lie in at least two of its
    subdirectories (one per class, as torchvision's ``ImageFolder``), ``y`` is the index of the
    image's first-level subdirectory in sorted name order, and ``classes`` lists those names;
    otherwise the folder is unlabelled (``y = -1``, ``classes``, ``labels``, ``num_classes`` None).

    Items: ``(x float32 (C, H, W) in [0, 1], y int64 0-dim)``, ``C`` 3 (1 with ``grayscale``).
    Raises ``FileNotFoundError`` when ``path`` does not exist, ``ValueError`` when it is not a
    directory or holds no image; reading an item raises ``ValueError`` naming the file when it is
    not a readable image or, without ``size``, has another size than the first.
    """
    root = _existing(path, "path")
    try:
        import PIL  # noqa: F401  (decoding happens per item; fail here, not in a DataLoader worker)
    except ImportError as error:
        raise ImportError("image_folder needs Pillow: pip install pillow (or fastvae[data])") from error
    if not root.is_dir():
        raise ValueError(f"path: '{root}' is not a directory (image_folder expects a folder of images)")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"size must be None or a positive int, got {size!r}")
    files = sorted(file for file in root.rglob("*") if file.suffix.lower() in IMAGE_SUFFIXES and file.is_file())
    if not files:
        raise ValueError(f"path: '{root}' holds no image (expected files ending in {', '.join(IMAGE_SUFFIXES)})")
    tops = [file.relative_to(root).parts for file in files]
    class_names = sorted({parts[0] for parts in tops if len(parts) > 1})
    labels = classes = None
    if all(len(parts) > 1 for parts in tops) and len(class_names) >= 2:
        classes = class_names
        lookup = {name: k for k, name in enumerate(classes)}
        labels = torch.tensor([lookup[parts[0]] for parts in tops], dtype=torch.int64)
    return ImageFolder(files, labels, classes, size=size, grayscale=grayscale, root=root)


# --- .npy / .npz -------------------------------------------------------------------------------


def _channels_first(data: torch.Tensor, source: str) -> torch.Tensor:
    """``(N, D)`` or ``(N, C, H, W)`` from an array laid out as in :func:`array_file`."""
    if data.dim() == 2:
        return data
    if data.dim() == 3:
        return data.unsqueeze(1)
    if data.dim() == 4:
        if data.shape[3] in _CHANNEL_COUNTS and data.shape[1] not in _CHANNEL_COUNTS:
            return data.permute(0, 3, 1, 2).contiguous()
        return data
    raise ValueError(
        f"{source}: expected an array of shape (N, D), (N, H, W), (N, C, H, W) or (N, H, W, C), got {tuple(data.shape)}"
    )


def _as_tensor(array: Any) -> torch.Tensor:
    """numpy ``array`` (bool, integer or floating) as a contiguous torch tensor in native byte order.

    Floating arrays become float32; the others keep their dtype.
    """
    import numpy as np

    dtype = np.float32 if np.issubdtype(array.dtype, np.floating) else array.dtype.newbyteorder("=")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=dtype))


def array_file(path: str | os.PathLike[str], *, key: str | None = None) -> ArrayDataset:
    """The array in ``.npy``/``.npz`` file ``path``, with labels from the ``.npz`` when present.

    Which array (``.npz``): ``key`` when given; else the first of ``x``, ``images``, ``data``,
    ``arr_0`` present; else the only array not named ``y`` or ``labels``; otherwise ``ValueError``
    listing the keys. Labels (``.npz`` only): the array ``y``, else ``labels``, when present: int
    ``(N,)``, values >= 0.

    Layout: ``(N, D)`` flat vectors; ``(N, H, W)`` one channel; ``(N, C, H, W)``; or channels-last
    ``(N, H, W, C)``, taken to be so exactly when the last dim is 1, 3 or 4 and the second is not
    (so an ambiguous ``(N, 3, 32, 3)`` is read as channels-first). Values: uint8 scaled by 1/255;
    bool as 0/1; floating as they are (float32). Other dtypes raise ``ValueError``.

    Items: ``(x float32 (D,) or (C, H, W), y int64 0-dim)``, ``y = -1`` without labels.
    """
    file = _existing(path, "path")
    try:
        import numpy as np
    except ImportError as error:
        raise ImportError("array_file needs numpy: pip install numpy (or fastvae[data])") from error
    source = str(file)
    try:
        loaded = np.load(file, allow_pickle=False)
    except _NUMPY_READ_ERRORS as error:
        raise ValueError(f"{source}: expected a .npy array or .npz archive of numeric arrays ({error})") from None
    label_key = label_array = None
    if isinstance(loaded, np.ndarray):
        if key is not None:
            raise ValueError(f"{source}: key={key!r} given, but a .npy file holds one unnamed array")
        array = loaded
    else:
        with loaded:
            names = list(loaded.files)
            chosen = _npz_data_key(names, key, source)
            array = _npz_member(loaded, chosen, source)
            label_key = next((name for name in NPZ_LABEL_KEYS if name in names and name != chosen), None)
            if label_key is not None:
                label_array = _npz_member(loaded, label_key, source)
    if not (array.dtype == np.uint8 or array.dtype == np.bool_ or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{source}: expected uint8 (scaled to [0, 1]), bool or floating data, got {array.dtype}")
    data = _channels_first(_as_tensor(array), source)
    labels = None
    if label_array is not None:
        label_source = f"{source} (labels '{label_key}')"
        if not np.issubdtype(label_array.dtype, np.integer):
            raise ValueError(f"{label_source}: labels must be integers, got dtype {label_array.dtype}")
        labels = _as_tensor(label_array)
        labels = _check_labels(labels, data.shape[0], label_source)
    return ArrayDataset(data, labels, source=source)


def _npz_member(archive: Any, name: str, source: str) -> Any:
    """Array ``name`` of the open ``.npz`` ``archive``; ``ValueError`` naming ``source`` if unreadable."""
    try:
        return archive[name]
    except _NUMPY_READ_ERRORS as error:
        raise ValueError(f"{source}: array '{name}' is not a readable numeric array ({error})") from None


def _npz_data_key(names: list[str], key: str | None, source: str) -> str:
    """Which array of an ``.npz`` with arrays ``names`` holds the data (rule in :func:`array_file`)."""
    if key is not None:
        if key not in names:
            raise ValueError(f"{source}: no array named key={key!r}; the file holds {names}")
        return key
    for name in NPZ_DATA_KEYS:
        if name in names:
            return name
    others = [name for name in names if name not in NPZ_LABEL_KEYS]
    if len(others) == 1:
        return others[0]
    raise ValueError(
        f"{source}: cannot tell which array holds the data: the file holds {names}; expected one named "
        f"{', '.join(NPZ_DATA_KEYS)}, or a single array besides labels ({', '.join(NPZ_LABEL_KEYS)}); "
        "pass key="
    )


# --- MNIST IDX ---------------------------------------------------------------------------------


def _read_idx(path: Path, magic: int, what: str) -> tuple[tuple[int, ...], bytes]:
    """The dims and the payload of IDX file ``path`` (gzip-compressed or not), checked against ``magic``."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise ValueError(f"{path}: corrupt gzip stream ({error})") from None
    ndim = magic & 0xFF
    header = 4 * (1 + ndim)
    if len(raw) < 4 or struct.unpack(">I", raw[:4])[0] != magic:
        found = f"0x{struct.unpack('>I', raw[:4])[0]:08x}" if len(raw) >= 4 else f"only {len(raw)} bytes"
        raise ValueError(f"{path}: not an IDX {what} file: expected magic number 0x{magic:08x}, found {found}")
    if len(raw) < header:
        raise ValueError(f"{path}: IDX header truncated: expected {header} bytes, file has {len(raw)}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    payload = raw[header:]
    expected = math.prod(dims)
    if len(payload) != expected:
        shape = " x ".join(map(str, dims))
        raise ValueError(
            f"{path}: size mismatch: the header says {shape} = {expected} bytes of data, the file has {len(payload)}"
        )
    return dims, payload


def mnist_idx(images_path: str | os.PathLike[str], labels_path: str | os.PathLike[str] | None = None) -> ArrayDataset:
    """MNIST-format IDX files (MNIST, Fashion-MNIST, KMNIST, EMNIST), each plain or gzip-compressed.

    ``images_path``: magic ``0x00000803`` (unsigned bytes, 3 dims), then big-endian uint32 ``N, H,
    W``, then ``N H W`` bytes. ``labels_path``: magic ``0x00000801``, then ``N``, then ``N`` bytes.
    Compression is recognised by the gzip signature, not the file name.

    Items: ``(x float32 (1, H, W) in [0, 1], y int64 0-dim)``, ``y = -1`` without ``labels_path``.
    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for a wrong
    magic number, a truncated or overlong file, or label and image counts that differ.
    """
    images_file = _existing(images_path, "images_path")
    dims, payload = _read_idx(images_file, IDX_IMAGES_MAGIC, "images")
    count, height, width = dims
    data = torch.frombuffer(bytearray(payload), dtype=torch.uint8).view(count, 1, height, width)
    labels = None
    if labels_path is not None:
        labels_file = _existing(labels_path, "labels_path")
        (label_count,), label_bytes = _read_idx(labels_file, IDX_LABELS_MAGIC, "labels")
        if label_count != count:
            raise ValueError(f"{labels_file}: holds {label_count} labels but {images_file} holds {count} images")
        labels = torch.frombuffer(bytearray(label_bytes), dtype=torch.uint8).to(torch.int64)
    return ArrayDataset(data, labels, source=str(images_file))


# --- load --------------------------------------------------------------------------------------

VALID_FORMS = (
    "'dsprites' (kwargs: size, seed), 'moving_sprites' (kwargs: num_sequences, seq_len, seed, ...), "
    "a directory of images, a .npy or .npz file, or an MNIST IDX images file "
    "(name ending in idx3-ubyte or idx3-ubyte.gz)"
)


def _sibling_labels(images_file: Path) -> Path | None:
    """The IDX labels file next to ``images_file`` (``...images-idx3-ubyte`` -> ``...labels-idx1-ubyte``)."""
    stem = images_file.name.removesuffix(".gz").replace("idx3", "idx1").replace("images", "labels")
    for name in (stem, stem + ".gz"):
        candidate = images_file.with_name(name)
        if candidate.is_file():
            return candidate
    return None


def load(spec: str | os.PathLike[str], **kwargs: Any) -> VAEDataset:
    """The data set ``spec`` names; ``kwargs`` go to the loader it resolves to.

    ``spec`` is, checked in this order: ``"dsprites"`` (:func:`~fastvae.data.dsprites`),
    ``"moving_sprites"`` (:func:`~fastvae.data.moving_sprites`), a directory
    (:func:`image_folder`), a path ending in ``.npy`` or ``.npz`` (:func:`array_file`), or a path
    ending in ``idx3-ubyte`` or ``idx3-ubyte.gz`` (:func:`mnist_idx`; unless ``labels_path`` is
    given, the labels file beside it, named with ``images`` -> ``labels`` and ``idx3`` -> ``idx1``,
    is used when it exists). Case is ignored in names and suffixes.

    Raises ``FileNotFoundError`` for a path that does not exist and ``ValueError``, listing the
    valid forms, for an existing path of no known form.
    """
    text = os.fspath(spec)
    if text.lower() == "dsprites":
        return dsprites(**kwargs)
    if text.lower() == "moving_sprites":
        return moving_sprites(**kwargs)
    path = Path(text)
    name = path.name.lower()
    if path.is_dir():
        return image_folder(path, **kwargs)
    if name.endswith((".npy", ".npz")):
        return array_file(path, **kwargs)
    if name.endswith(("idx3-ubyte", "idx3-ubyte.gz")):
        if "labels_path" not in kwargs:
            kwargs["labels_path"] = _sibling_labels(path) if path.exists() else None
        return mnist_idx(path, **kwargs)
    if not path.exists():
        raise FileNotFoundError(
            f"spec: no such file or directory: '{text}' (and not a built-in name); valid: {VALID_FORMS}"
        )
    raise ValueError(f"spec: '{text}' is not a data set fastvae can load; valid: {VALID_FORMS}")
