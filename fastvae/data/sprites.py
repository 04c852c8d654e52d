"""Procedural dSprites: 64 x 64 binary sprites with known generative factors, rendered on demand.

The factor grid and its ordering are those of dSprites (Matthey et al., 2017): 3 shapes (square,
ellipse, heart) x 6 scales ``linspace(0.5, 1, 6)`` x 40 orientations ``linspace(0, 2 pi, 40)`` x 32
``pos_x`` x 32 ``pos_y`` (each ``linspace(0, 1, 32)``) = 737,280 images, numbered with ``pos_y``
fastest::

    index = (((shape * 6 + scale) * 40 + orientation) * 32 + pos_x) * 32 + pos_y

No image is stored: :func:`render` draws a batch from factor values, vectorised in torch.

Geometry (pixel units; the image spans ``[0, 64]`` on both axes, pixel ``(row, col)`` is the point
``(col + 0.5, row + 0.5)``, which is inside the sprite or not: images are exactly binary):

- the sprite's centre is ``(10 + 44 pos_x, 10 + 44 pos_y)``: ``pos_x = 0`` is the left,
  ``pos_y = 0`` the top of the image;
- every shape at scale ``s`` fits in the disc of radius ``9.5 s`` around its centre, so at every
  grid point (positions in ``[0, 1]``, scales up to 1, any orientation) it lies wholly inside the
  frame;
- orientation ``theta`` turns the sprite counter-clockwise on screen by ``theta`` radians about its
  centre;
- in the sprite's frame ``(u, v)`` (right and up, in units of ``10 s`` pixels) the shapes are:
  square ``max(|u|, |v|) <= 0.95 / sqrt 2`` (side 13.4 px at scale 1); ellipse
  ``(u / 0.95)^2 + (v / 0.475)^2 <= 1`` (2:1, long axis horizontal at orientation 0); heart
  ``(x^2 + y^2 - 1)^3 - x^2 y^3 <= 0`` with ``x = k u``, ``y = k v + 0.25``, ``k = 1.25 / 0.95``
  (upright, lobes up, centred on the middle of its bounding disc).

As in dSprites, orientation is ambiguous: the first and last of the 40 orientations (0 and
``2 pi``) give identical images (checked on the whole grid); the square looks the same after a
quarter turn (4-fold symmetry) and the ellipse after a half turn (2-fold), so ``theta`` and
``theta + pi / 2`` (square) or ``theta + pi`` (ellipse) give the same image up to a few boundary
pixels. Only the heart has no symmetry. Disentanglement metrics that score orientation inherit
these ambiguities.
"""

from __future__ import annotations

import math

import torch

from fastvae.data.base import VAEDataset, item_positions

__all__ = ["DSprites", "MovingSprites", "dsprites", "moving_sprites", "render"]

IMAGE_SIZE = 64
#: Pixel coordinate of the sprite centre at position 0; position 1 is at ``IMAGE_SIZE - MARGIN``.
MARGIN = 10.0
#: Pixels per unit of the sprite frame at scale 1 (the shapes are defined within radius 0.95).
UNIT = 10.0
SHAPE_NAMES: tuple[str, ...] = ("square", "ellipse", "heart")

#: Radius, in sprite-frame units, of the disc around the centre that holds every shape.
_RADIUS = 0.95
_SQUARE_HALF_SIDE = _RADIUS / math.sqrt(2.0)
_ELLIPSE_AXES = (_RADIUS, _RADIUS / 2)
_HEART_ZOOM = 1.25 / _RADIUS  # the heart curve's farthest point from (0, 0.25) is 1.25 away
_HEART_SHIFT = 0.25


def _inside(shape: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Whether points ``(u, v)`` of the unit sprite frame (any shape, float) are inside shape ``shape``."""
    if shape == 0:
        return torch.maximum(u.abs(), v.abs()) <= _SQUARE_HALF_SIDE
    if shape == 1:
        a, b = _ELLIPSE_AXES
        return (u / a).square() + (v / b).square() <= 1.0
    x2 = (u * _HEART_ZOOM).square()
    y = v * _HEART_ZOOM + _HEART_SHIFT
    return (x2 + y.square() - 1.0).pow(3) <= x2 * y.pow(3)


def render(
    shape: torch.Tensor | int,
    scale: torch.Tensor | float,
    orientation: torch.Tensor | float,
    pos_x: torch.Tensor | float,
    pos_y: torch.Tensor | float,
) -> torch.Tensor:
    """Render sprites from factor values (geometry in the module docstring).

    Args:
        shape: integer shape ids, 0 square, 1 ellipse, 2 heart.
        scale: scales, > 0 (dSprites uses 0.5 to 1; above 1 a sprite may leave the frame).
        orientation: angles in radians, counter-clockwise.
        pos_x, pos_y: positions in ``[0, 1]`` (left to right, top to bottom); values outside move
            the sprite further, partly or wholly out of the frame.

    The arguments are tensors of any shape (or numbers) that broadcast together to ``batch``; they
    may live on any device, which the result shares.

    Returns:
        float32 ``(*batch, 64, 64)`` with values in ``{0, 1}``.
    """
    named = {"shape": shape, "scale": scale, "orientation": orientation, "pos_x": pos_x, "pos_y": pos_y}
    tensors = {name: torch.as_tensor(value) for name, value in named.items()}
    device = next((t.device for t in tensors.values() if t.dim() > 0), tensors["shape"].device)
    if tensors["shape"].dtype.is_floating_point or tensors["shape"].dtype == torch.bool:
        raise TypeError(f"shape must hold integer shape ids, got dtype {tensors['shape'].dtype}")
    try:  # (torch.broadcast_shapes would import sympy on first use: a second or more)
        shape_ids, *values = torch.broadcast_tensors(*tensors.values())
    except RuntimeError:
        sizes = ", ".join(f"{name} {tuple(t.shape)}" for name, t in tensors.items())
        raise ValueError(f"shape, scale, orientation, pos_x and pos_y must broadcast together, got {sizes}") from None
    batch = shape_ids.shape
    shapes = shape_ids.to(device=device, dtype=torch.int64).reshape(-1)
    params = torch.stack([value.to(device=device, dtype=torch.float64).reshape(-1) for value in values])
    if shapes.numel() and (shapes.min() < 0 or shapes.max() >= len(SHAPE_NAMES)):
        raise ValueError(
            f"shape must be in [0, {len(SHAPE_NAMES)}) (0 square, 1 ellipse, 2 heart), got {shapes.unique().tolist()}"
        )
    for name, values in zip(list(named)[1:], params, strict=True):
        if not bool(values.isfinite().all()):
            raise ValueError(f"{name} must be finite, got {values[~values.isfinite()][0].item()}")
    if not bool((params[0] > 0).all()):
        raise ValueError(f"scale must be > 0, got minimum {params[0].min().item()}")

    scale64, theta, px, py = params
    n = shapes.numel()
    centre_x = MARGIN + (IMAGE_SIZE - 2 * MARGIN) * px
    centre_y = MARGIN + (IMAGE_SIZE - 2 * MARGIN) * py
    # Only a window around each sprite is drawn: a square of `window` pixels, wide enough for the
    # disc of radius 9.5 * scale that holds the sprite, moved as needed to lie inside the frame
    # (where it still covers the part of the sprite inside the frame).
    window = min(IMAGE_SIZE, math.ceil(2 * _RADIUS * UNIT * float(scale64.max())) + 2) if n else 0
    left = (centre_x - window / 2).floor().clamp(0, IMAGE_SIZE - window)
    top = (centre_y - window / 2).floor().clamp(0, IMAGE_SIZE - window)
    offsets = torch.arange(window, device=device, dtype=torch.float64) + 0.5
    right = (left[:, None] + offsets - centre_x[:, None]).float()  # (n, window): pixel centre - sprite centre
    up = (centre_y[:, None] - top[:, None] - offsets).float()  # (n, window): the same, up positive
    # Rotation by -theta and 1 / (scale * UNIT), per sprite in float64, then per pixel in float32.
    inv = 1.0 / (scale64 * UNIT)
    cos_inv, sin_inv = (torch.cos(theta) * inv).float(), (torch.sin(theta) * inv).float()

    crops = torch.empty(n, window, window, device=device)
    for shape_id in range(len(SHAPE_NAMES)):
        rows = (shapes == shape_id).nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        c, s = cos_inv[rows, None, None], sin_inv[rows, None, None]
        dx, dy = right[rows, None, :], up[rows, :, None]
        u = c * dx + s * dy  # (rows, window, window)
        v = c * dy - s * dx
        crops.index_copy_(0, rows, _inside(shape_id, u, v).float())
    out = torch.zeros(n, IMAGE_SIZE, IMAGE_SIZE, device=device)
    pixels = torch.arange(window, device=device)
    out[
        torch.arange(n, device=device)[:, None, None],
        (top.long()[:, None] + pixels)[:, :, None],
        (left.long()[:, None] + pixels)[:, None, :],
    ] = crops
    return out.reshape(*batch, IMAGE_SIZE, IMAGE_SIZE)


class DSprites(VAEDataset):
    """The dSprites factor grid (or a subset of it), rendered on demand.

    Items are ``(image, factors)``: float32 ``(1, 64, 64)`` in ``{0, 1}`` and int64 ``(5,)`` class
    indices ``(shape, scale, orientation, pos_x, pos_y)``. ``num_classes`` and ``labels`` are None
    (the factors are not one class label).

    Two kinds of index: *positions* ``0 .. len(self) - 1`` address this data set's items
    (``__getitem__``, ``batch``); *indices* ``0 .. 737279`` address the whole dSprites grid in its
    ordering (``images``, ``factors``, ``factor_values``, ``index_of``), so that disentanglement
    metrics can sample factors, fix one, and render, whatever subset training uses.
    ``indices[position]`` maps the first to the second.

    The object holds only the subset's indices (none for the whole grid), so it pickles cheaply
    to ``DataLoader`` workers.
    """

    FACTOR_NAMES: tuple[str, ...] = ("shape", "scale", "orientation", "pos_x", "pos_y")
    FACTOR_SIZES: tuple[int, ...] = (3, 6, 40, 32, 32)
    SHAPE_NAMES: tuple[str, ...] = SHAPE_NAMES
    NUM_COMBINATIONS: int = math.prod(FACTOR_SIZES)

    input_shape = (1, IMAGE_SIZE, IMAGE_SIZE)
    num_classes = None
    labels = None

    def __init__(self, indices: torch.Tensor | None = None) -> None:
        """``indices``: the grid indices (int64 ``(N,)``) this data set holds, in order; None for all."""
        if indices is not None:
            indices = self._check_indices(indices, "indices").clone()
        self._indices = indices

    @property
    def indices(self) -> torch.Tensor:
        """int64 ``(len(self),)``: the grid index of each position."""
        return torch.arange(self.NUM_COMBINATIONS) if self._indices is None else self._indices

    def __len__(self) -> int:
        return self.NUM_COMBINATIONS if self._indices is None else self._indices.numel()

    # --- factors and the ordering ----------------------------------------------------------------

    @classmethod
    def factor_value_tables(cls) -> tuple[torch.Tensor, ...]:
        """The value of each class of each factor, float64: ``(3,), (6,), (40,), (32,), (32,)``.

        Shape values are the shape ids 0, 1, 2; the others are the ``linspace`` grids of the module
        docstring (orientation ``0`` to ``2 pi`` inclusive).
        """
        return (
            torch.arange(3, dtype=torch.float64),
            torch.linspace(0.5, 1.0, 6, dtype=torch.float64),
            torch.linspace(0.0, 2.0 * math.pi, 40, dtype=torch.float64),
            torch.linspace(0.0, 1.0, 32, dtype=torch.float64),
            torch.linspace(0.0, 1.0, 32, dtype=torch.float64),
        )

    @classmethod
    def _check_indices(cls, indices: object, name: str) -> torch.Tensor:
        tensor = torch.as_tensor(indices)
        if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer grid indices, got dtype {tensor.dtype}")
        tensor = tensor.to(torch.int64)
        if tensor.numel() and (tensor.min() < 0 or tensor.max() >= cls.NUM_COMBINATIONS):
            raise ValueError(
                f"{name} must be in [0, {cls.NUM_COMBINATIONS}), got values in "
                f"[{int(tensor.min())}, {int(tensor.max())}]"
            )
        return tensor

    @classmethod
    def factors(cls, indices: torch.Tensor) -> torch.Tensor:
        """Factor classes of grid ``indices`` (int ``(...)``): int64 ``(..., 5)``, the inverse of ``index_of``."""
        rest = cls._check_indices(indices, "indices")
        columns = []
        for size in reversed(cls.FACTOR_SIZES):
            columns.append(rest % size)
            rest = rest // size
        return torch.stack(columns[::-1], dim=-1)

    @classmethod
    def index_of(cls, factors: torch.Tensor) -> torch.Tensor:
        """Grid indices (int64 ``(...)``) of factor classes ``factors`` (int ``(..., 5)``)."""
        tensor = torch.as_tensor(factors)
        if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
            raise TypeError(f"factors must hold integer factor classes, got dtype {tensor.dtype}")
        if tensor.dim() == 0 or tensor.shape[-1] != len(cls.FACTOR_SIZES):
            raise ValueError(f"factors must have shape (..., {len(cls.FACTOR_SIZES)}), got {tuple(tensor.shape)}")
        tensor = tensor.to(torch.int64)
        index = torch.zeros(tensor.shape[:-1], dtype=torch.int64, device=tensor.device)
        for k, (name, size) in enumerate(zip(cls.FACTOR_NAMES, cls.FACTOR_SIZES, strict=True)):
            column = tensor[..., k]
            if column.numel() and (column.min() < 0 or column.max() >= size):
                raise ValueError(
                    f"factors[..., {k}] ({name}) must be in [0, {size}), got values in "
                    f"[{int(column.min())}, {int(column.max())}]"
                )
            index = index * size + column
        return index

    @classmethod
    def factor_values(cls, indices: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Factor values of grid ``indices`` (int ``(...)``): ``(..., 5)`` in ``dtype``.

        Columns: shape id (0, 1, 2), scale, orientation (radians), pos_x, pos_y.
        """
        classes = cls.factors(indices)
        tables = cls.factor_value_tables()
        values = [table.to(classes.device)[classes[..., k]] for k, table in enumerate(tables)]
        return torch.stack(values, dim=-1).to(dtype)

    @classmethod
    def sample_factors(cls, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` factor classes drawn uniformly from the whole grid: int64 ``(n, 5)``.

        Each factor is uniform and independent of the others (uniform over the 737,280
        combinations), whatever subset this data set holds.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        columns = [torch.randint(size, (n,), generator=generator) for size in cls.FACTOR_SIZES]
        return torch.stack(columns, dim=-1)

    # --- rendering -----------------------------------------------------------------------------

    @classmethod
    def render_factors(cls, factors: torch.Tensor) -> torch.Tensor:
        """Images of factor classes ``factors`` (int ``(B, 5)``): float32 ``(B, 1, 64, 64)`` in ``{0, 1}``."""
        return cls.images(cls.index_of(factors))

    @classmethod
    def images(cls, indices: torch.Tensor) -> torch.Tensor:
        """Images of grid ``indices`` (int ``(B,)``): float32 ``(B, 1, 64, 64)`` in ``{0, 1}``."""
        values = cls.factor_values(indices, dtype=torch.float64)
        return render(values[..., 0].long(), *values[..., 1:].unbind(-1)).unsqueeze(-3)

    def batch(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Items at positions ``items`` (int ``(B,)``): images float32 ``(B, 1, 64, 64)``, factors int64 ``(B, 5)``."""
        positions = item_positions(items, len(self))
        indices = positions if self._indices is None else self._indices[positions]
        return self.images(indices), self.factors(indices)

    def __repr__(self) -> str:
        return f"DSprites(len={len(self)}{'' if self._indices is None else ', subset'})"


def dsprites(size: int | None = None, *, seed: int = 0) -> DSprites:
    """The dSprites grid: all 737,280 combinations, or a random subset of ``size`` of them.

    The subset is ``size`` distinct grid indices drawn uniformly with ``seed`` and kept in grid
    order; the same ``size`` and ``seed`` always give the same subset.
    """
    if size is None:
        return DSprites()
    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= DSprites.NUM_COMBINATIONS:
        raise ValueError(f"size must be None or an int in [1, {DSprites.NUM_COMBINATIONS}], got {size!r}")
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(DSprites.NUM_COMBINATIONS, generator=generator)[:size]
    return DSprites(chosen.sort().values)


# --- moving sprites --------------------------------------------------------------------------------


def _bounce(position: torch.Tensor) -> torch.Tensor:
    """``position`` folded into ``[0, 1]`` by reflection at 0 and 1 (a triangle wave)."""
    folded = torch.remainder(position, 2.0)
    return torch.where(folded > 1.0, 2.0 - folded, folded)


class MovingSprites(VAEDataset):
    """Sequences of one dSprites sprite moving with constant velocity, rendered on demand.

    Sequence ``i`` has a shape and a scale drawn from the dSprites grid, a start position uniform
    in ``[0, 1]^2``, a velocity of speed uniform in ``speed`` (position units per frame; 1 unit =
    44 px) in a uniform direction, a start orientation uniform in ``[0, 2 pi)`` and an angular
    velocity uniform in ``[-angular_speed, angular_speed]`` (radians per frame). All are drawn once,
    at construction, from ``seed``; frames are rendered when an item is read.

    Boundaries (``boundary``): ``"bounce"`` reflects each coordinate at 0 and 1 (the sprite centre
    bounces off the edge of the position range, where a scale-1 sprite touches the frame), so the
    velocity flips sign at a bounce and is constant between bounces; ``"wrap"`` takes each
    coordinate modulo 1 (the sprite leaves one side and reappears whole at the other).

    Items are ``(frames, factors)``: float32 ``(T, 1, 64, 64)`` in ``{0, 1}`` and float32
    ``(T, 5)`` factor *values* ``(shape id, scale, orientation in [0, 2 pi), pos_x, pos_y)``
    (positions are continuous here, so there are no factor classes). ``input_shape`` is
    ``(T, 1, 64, 64)``.

    Attributes (one row per sequence, float64 unless said): ``shape`` (int64 ``(N,)``), ``scale``
    ``(N,)``, ``start`` ``(N, 2)`` (pos_x, pos_y at frame 0), ``velocity`` ``(N, 2)`` (per frame,
    before any bounce), ``start_orientation`` ``(N,)``, ``angular_velocity`` ``(N,)``.
    """

    num_classes = None
    labels = None

    def __init__(
        self,
        num_sequences: int,
        *,
        seq_len: int = 20,
        seed: int = 0,
        speed: tuple[float, float] = (0.02, 0.06),
        angular_speed: float = 0.0,
        boundary: str = "bounce",
    ) -> None:
        if isinstance(num_sequences, bool) or not isinstance(num_sequences, int) or num_sequences < 1:
            raise ValueError(f"num_sequences must be a positive int, got {num_sequences!r}")
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
            raise ValueError(f"seq_len must be a positive int, got {seq_len!r}")
        low, high = speed
        if not 0.0 <= low <= high:
            raise ValueError(f"speed must be a (low, high) pair with 0 <= low <= high, got {speed!r}")
        if not angular_speed >= 0.0:
            raise ValueError(f"angular_speed must be >= 0, got {angular_speed!r}")
        if boundary not in ("bounce", "wrap"):
            raise ValueError(f"boundary must be 'bounce' or 'wrap', got {boundary!r}")
        self.seq_len = seq_len
        self.boundary = boundary
        self.input_shape = (seq_len, 1, IMAGE_SIZE, IMAGE_SIZE)

        generator = torch.Generator().manual_seed(seed)
        n = num_sequences
        f64 = torch.float64
        scales = DSprites.factor_value_tables()[1]
        self.shape = torch.randint(len(SHAPE_NAMES), (n,), generator=generator)
        self.scale = scales[torch.randint(len(scales), (n,), generator=generator)]
        self.start = torch.rand(n, 2, generator=generator, dtype=f64)
        heading = 2.0 * math.pi * torch.rand(n, generator=generator, dtype=f64)
        magnitude = low + (high - low) * torch.rand(n, generator=generator, dtype=f64)
        self.velocity = magnitude[:, None] * torch.stack([heading.cos(), heading.sin()], dim=1)
        self.start_orientation = 2.0 * math.pi * torch.rand(n, generator=generator, dtype=f64)
        self.angular_velocity = angular_speed * (2.0 * torch.rand(n, generator=generator, dtype=f64) - 1.0)

    def __len__(self) -> int:
        return self.shape.numel()

    def factor_values(self, items: torch.Tensor) -> torch.Tensor:
        """Factor values of sequences at positions ``items`` (int ``(B,)``): float64 ``(B, T, 5)``."""
        positions = item_positions(items, len(self))
        t = torch.arange(self.seq_len, dtype=torch.float64)
        path = self.start[positions, None, :] + t[None, :, None] * self.velocity[positions, None, :]
        path = _bounce(path) if self.boundary == "bounce" else torch.remainder(path, 1.0)
        theta = self.start_orientation[positions, None] + t * self.angular_velocity[positions, None]
        batch = (positions.numel(), self.seq_len)
        return torch.stack(
            [
                self.shape[positions, None].expand(batch).double(),
                self.scale[positions, None].expand(batch),
                torch.remainder(theta, 2.0 * math.pi),
                path[..., 0],
                path[..., 1],
            ],
            dim=-1,
        )

    def batch(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequences at positions ``items`` (int ``(B,)``).

        Returns frames float32 ``(B, T, 1, 64, 64)`` in ``{0, 1}`` and factor values float32 ``(B, T, 5)``.
        """
        values = self.factor_values(items)
        frames = render(values[..., 0].long(), *values[..., 1:].unbind(-1)).unsqueeze(-3)
        return frames, values.float()


def moving_sprites(
    num_sequences: int,
    *,
    seq_len: int = 20,
    seed: int = 0,
    speed: tuple[float, float] = (0.02, 0.06),
    angular_speed: float = 0.0,
    boundary: str = "bounce",
) -> MovingSprites:
    """``num_sequences`` moving-sprite sequences of ``seq_len`` frames (see :class:`MovingSprites`).

    Deterministic: the same arguments give the same sequences.
    """
    return MovingSprites(
        num_sequences, seq_len=seq_len, seed=seed, speed=speed, angular_speed=angular_speed, boundary=boundary
    )
