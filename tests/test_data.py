"""Tests of fastvae.data: the dSprites grid and its ordering, the renderer's geometry, moving sprites,
the file loaders (round trips through files written here) and their error messages.

Geometry expectations are written from the rule in fastvae/data/sprites.py's docstring: the sprite
centre is at pixel ``10 + 44 * pos`` on each axis (pos_y down), orientation turns counter-clockwise
on screen, and at scale ``s`` the shapes have areas ``(2 * 9.5 / sqrt 2 * s)^2`` (square),
``pi * 9.5 * 4.75 * s^2`` (ellipse) and ``3.662 / (1.25 / 0.95)^2 * 100 * s^2`` (heart; 3.662 is
the area of ``(x^2 + y^2 - 1)^3 <= x^2 y^3``, measured once on a fine grid).
"""

from __future__ import annotations

import gzip
import itertools
import math
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tolerances import (
    CENTROID_ATOL,
    CENTROID_STEP_ATOL,
    FLOAT32_ORDER_ONE,
    FLOAT64_REORDERED,
    FLOAT64_TRAJECTORY,
    RENDER_FLIPPED_PIXELS,
    SPRITE_AREA,
    SYMMETRIC_TURN_CHANGED_FRACTION,
)

from fastvae import data
from fastvae.data import DSprites

SIZES = (3, 6, 40, 32, 32)
N_ALL = 737_280
SCALES = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
SQUARE, ELLIPSE, HEART = 0, 1, 2
AREA_AT_SCALE_1 = {
    SQUARE: (2 * 9.5 / math.sqrt(2)) ** 2,
    ELLIPSE: math.pi * 9.5 * 4.75,
    HEART: 3.662 / (1.25 / 0.95) ** 2 * 100,
}


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: these tensors are small, and on a busy machine OpenMP threads that wait
    for each other make a 2-thread render tens of times slower than a 1-thread one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _centroid(images: torch.Tensor) -> torch.Tensor:
    """Pixel-space centroids ``(..., 2)`` as (x, y) of binary images ``(..., 64, 64)``; pixel centres at +0.5."""
    coords = torch.arange(64, dtype=torch.float64) + 0.5
    mass = images.double().sum((-2, -1))
    x = (images.double() * coords).sum((-2, -1)) / mass
    y = (images.double() * coords[:, None]).sum((-2, -1)) / mass
    return torch.stack([x, y], dim=-1)


# --- the grid and its ordering --------------------------------------------------------------------


def test_grid_constants_and_length() -> None:
    assert DSprites.FACTOR_NAMES == ("shape", "scale", "orientation", "pos_x", "pos_y")
    assert DSprites.FACTOR_SIZES == SIZES
    assert len(data.dsprites()) == N_ALL == math.prod(SIZES)
    assert len(data.dsprites(1000)) == 1000
    assert data.dsprites().input_shape == (1, 64, 64)
    assert data.dsprites().num_classes is None and data.dsprites().labels is None


def test_ordering_is_dsprites_order_with_pos_y_fastest() -> None:
    # The dSprites order is the row-major (last fastest) enumeration of the factor grid.
    expected = torch.cartesian_prod(*(torch.arange(size) for size in SIZES))
    assert torch.equal(DSprites.factors(torch.arange(N_ALL)), expected)
    assert DSprites.factors(torch.tensor(1)).tolist() == [0, 0, 0, 0, 1]
    assert DSprites.factors(torch.tensor(32)).tolist() == [0, 0, 0, 1, 0]
    assert DSprites.factors(torch.tensor(32 * 32)).tolist() == [0, 0, 1, 0, 0]
    assert DSprites.factors(torch.tensor(40 * 32 * 32)).tolist() == [0, 1, 0, 0, 0]
    assert DSprites.factors(torch.tensor(6 * 40 * 32 * 32)).tolist() == [1, 0, 0, 0, 0]


def test_index_of_inverts_factors_on_random_indices_and_corners() -> None:
    random = torch.randint(N_ALL, (2000,), generator=_generator(0))
    assert torch.equal(DSprites.index_of(DSprites.factors(random)), random)
    corners = torch.tensor(list(itertools.product(*((0, size - 1) for size in SIZES))))
    indices = DSprites.index_of(corners)
    assert indices.min() == 0 and indices.max() == N_ALL - 1
    assert torch.equal(DSprites.factors(indices), corners)
    manual = (((corners[:, 0] * 6 + corners[:, 1]) * 40 + corners[:, 2]) * 32 + corners[:, 3]) * 32 + corners[:, 4]
    assert torch.equal(indices, manual)


def test_factor_lookup_rejects_out_of_range_values_naming_them() -> None:
    with pytest.raises(ValueError, match=r"factors\[\.\.\., 2\] \(orientation\) must be in \[0, 40\)"):
        DSprites.index_of(torch.tensor([[0, 0, 40, 0, 0]]))
    with pytest.raises(ValueError, match=r"factors must have shape \(\.\.\., 5\)"):
        DSprites.index_of(torch.zeros(3, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="indices must be in"):
        DSprites.factors(torch.tensor([N_ALL]))


def test_factor_values_follow_the_linspace_grids() -> None:
    scale_rows = DSprites.index_of(torch.tensor([[0, k, 0, 0, 0] for k in range(6)]))
    scales = DSprites.factor_values(scale_rows, dtype=torch.float64)[:, 1]
    assert scales.tolist() == pytest.approx(SCALES, abs=FLOAT64_REORDERED.atol)
    orient_rows = DSprites.index_of(torch.tensor([[0, 0, k, 0, 0] for k in range(40)]))
    orientations = DSprites.factor_values(orient_rows, dtype=torch.float64)[:, 2]
    assert orientations[0] == 0.0
    assert orientations[-1] == pytest.approx(2 * math.pi, abs=FLOAT64_REORDERED.atol)
    grid = [2 * math.pi * k / 39 for k in range(40)]
    assert orientations.tolist() == pytest.approx(grid, abs=FLOAT64_REORDERED.atol)
    pos_rows = DSprites.index_of(torch.tensor([[2, 0, 0, k, 31 - k] for k in range(32)]))
    values = DSprites.factor_values(pos_rows)
    assert values.dtype == torch.float32
    assert values[:, 3].tolist() == pytest.approx([k / 31 for k in range(32)], abs=FLOAT32_ORDER_ONE.atol)
    assert values[:, 4].tolist() == pytest.approx([(31 - k) / 31 for k in range(32)], abs=FLOAT32_ORDER_ONE.atol)
    assert values[:, 0].tolist() == [2.0] * 32


def test_sample_factors_is_uniform_over_the_grid_and_seeded() -> None:
    factors = DSprites.sample_factors(5000, _generator(3))
    assert factors.shape == (5000, 5) and factors.dtype == torch.int64
    assert factors.min(0).values.tolist() == [0] * 5
    assert factors.max(0).values.tolist() == [size - 1 for size in SIZES]
    assert torch.equal(factors, DSprites.sample_factors(5000, _generator(3)))
    # "Fix one factor and render", as the disentanglement metrics do.
    factors[:, 0] = HEART
    images = DSprites.render_factors(factors[:8])
    assert torch.equal(images, DSprites.images(DSprites.index_of(factors[:8])))


# --- rendering ------------------------------------------------------------------------------------


def test_images_are_binary_float32_of_the_documented_shape() -> None:
    indices = torch.randint(N_ALL, (64,), generator=_generator(1))
    images = DSprites.images(indices)
    assert images.shape == (64, 1, 64, 64) and images.dtype == torch.float32
    assert set(images.unique().tolist()) == {0.0, 1.0}
    assert (images.sum((1, 2, 3)) > 0).all()
    assert data.render(1, 0.5, 0.0, 0.5, 0.5).shape == (64, 64)


def _reference_render(shape: int, scale: float, theta: float, pos_x: float, pos_y: float) -> torch.Tensor:
    """The sprite of the module docstring's formulas, evaluated at every pixel centre in float64."""
    centres = torch.arange(64, dtype=torch.float64) + 0.5
    right = centres[None, :] - (10 + 44 * pos_x)
    up = (10 + 44 * pos_y) - centres[:, None]
    u = (math.cos(theta) * right + math.sin(theta) * up) / (10 * scale)
    v = (-math.sin(theta) * right + math.cos(theta) * up) / (10 * scale)
    if shape == SQUARE:
        return torch.maximum(u.abs(), v.abs()) <= 0.95 / math.sqrt(2)
    if shape == ELLIPSE:
        return (u / 0.95) ** 2 + (v / 0.475) ** 2 <= 1
    x, y = u * 1.25 / 0.95, v * 1.25 / 0.95 + 0.25
    return (x**2 + y**2 - 1) ** 3 - x**2 * y**3 <= 0


def test_render_matches_the_documented_formulas_on_the_whole_frame() -> None:
    # Mixed shapes in one batch, scales past 1 and positions past the frame's edges, so sprites are
    # cut by the border: the renderer draws only a window around each sprite and must lose nothing.
    generator = _generator(7)
    n = 96
    shape = torch.randint(3, (n,), generator=generator)
    scale = 0.3 + 1.2 * torch.rand(n, generator=generator, dtype=torch.float64)
    theta = 2 * math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
    pos_x, pos_y = -0.4 + 1.8 * torch.rand(2, n, generator=generator, dtype=torch.float64)
    images = data.render(shape, scale, theta, pos_x, pos_y)
    expected = torch.stack(
        [_reference_render(*map(float, row)) for row in zip(shape, scale, theta, pos_x, pos_y, strict=True)]
    )
    mismatches = (images.bool() != expected).sum((1, 2))
    assert mismatches.max() <= RENDER_FLIPPED_PIXELS  # a pixel centre within float32 rounding of the boundary may flip
    assert (expected.sum((1, 2)) > 0).float().mean() > 0.8  # the batch is mostly visible sprites
    assert expected[:, [0, -1]].any() and expected[:, :, [0, -1]].any()  # and some touch the border


def test_sprites_stay_inside_the_frame_at_scale_1_everywhere() -> None:
    corners = torch.tensor(
        [
            [shape, 5, orient, px, py]
            for shape in range(3)
            for orient in range(0, 40, 3)
            for px in (0, 31)
            for py in (0, 31)
        ]
    )
    images = DSprites.render_factors(corners)[:, 0]
    border = images[:, 0, :].sum() + images[:, -1, :].sum() + images[:, :, 0].sum() + images[:, :, -1].sum()
    assert border == 0
    assert (images.sum((1, 2)) > 50).all()


@pytest.mark.parametrize("shape", [SQUARE, ELLIPSE, HEART])
def test_pixel_count_grows_with_scale_like_the_area(shape: int) -> None:
    generator = _generator(10 + shape)
    n = 64
    orientation = 2 * math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
    pos_x, pos_y = torch.rand(2, n, generator=generator, dtype=torch.float64)
    counts = torch.stack([data.render(shape, scale, orientation, pos_x, pos_y).sum((1, 2)) for scale in SCALES])
    # Every sprite grows about its centre, so no pixel is lost as the scale grows ...
    assert (counts[1:] >= counts[:-1]).all()
    # ... and on average the count is the area, which grows as scale^2.
    mean = counts.mean(1)
    assert (mean[1:] > mean[:-1]).all()
    expected = torch.tensor([AREA_AT_SCALE_1[shape] * scale**2 for scale in SCALES])
    assert torch.allclose(mean.double(), expected.double(), **SPRITE_AREA)


@pytest.mark.parametrize("shape", [SQUARE, ELLIPSE, HEART])
def test_position_moves_the_centroid_by_44_pixels(shape: int) -> None:
    # Orientation 0 and pi/3; the centroid of a sprite is a fixed offset from its centre, so moving
    # pos_x from 0 to 1 moves it right by 44 px (and pos_y from 0 to 1 down by 44 px).
    for orientation in (0.0, math.pi / 3):
        left_top = data.render(shape, 0.8, orientation, 0.0, 0.0)
        right = data.render(shape, 0.8, orientation, 1.0, 0.0)
        bottom = data.render(shape, 0.8, orientation, 0.0, 1.0)
        dx = _centroid(right) - _centroid(left_top)
        dy = _centroid(bottom) - _centroid(left_top)
        assert dx.tolist() == pytest.approx([44.0, 0.0], abs=CENTROID_ATOL)
        assert dy.tolist() == pytest.approx([0.0, 44.0], abs=CENTROID_ATOL)
    if shape != HEART:  # centrally symmetric: the centroid is the centre, 10 px in from the corner
        centroid = _centroid(data.render(shape, 1.0, 0.0, 0.0, 0.0))
        assert centroid.tolist() == pytest.approx([10.0, 10.0], abs=CENTROID_ATOL)


def test_orientation_0_and_2pi_render_identically() -> None:
    # Every shape and scale, one position in 25, at the first and the last orientation.
    rows = torch.cartesian_prod(
        torch.arange(3), torch.arange(6), torch.tensor([0]), torch.arange(0, 32, 5), torch.arange(2, 32, 5)
    )
    last = rows.clone()
    last[:, 2] = 39
    assert torch.equal(DSprites.render_factors(rows), DSprites.render_factors(last))
    assert torch.equal(data.render(HEART, 0.7, 0.0, 0.3, 0.6), data.render(HEART, 0.7, 2 * math.pi, 0.3, 0.6))


def _rotation_difference(shape: int, turn: float) -> torch.Tensor:
    """Fraction of a sprite's pixels that change when it is turned by ``turn``, over random sprites."""
    generator = _generator(20 + shape)
    n = 64
    orientation = 2 * math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
    scale = 0.5 + 0.5 * torch.rand(n, generator=generator, dtype=torch.float64)
    pos_x, pos_y = torch.rand(2, n, generator=generator, dtype=torch.float64)
    before = data.render(shape, scale, orientation, pos_x, pos_y)
    after = data.render(shape, scale, orientation + turn, pos_x, pos_y)
    return (before != after).sum((1, 2)) / before.sum((1, 2))


def test_rotational_symmetries_square_4_fold_ellipse_2_fold_heart_none() -> None:
    assert _rotation_difference(SQUARE, math.pi / 2).max() <= SYMMETRIC_TURN_CHANGED_FRACTION
    assert _rotation_difference(ELLIPSE, math.pi).max() <= SYMMETRIC_TURN_CHANGED_FRACTION
    assert _rotation_difference(ELLIPSE, math.pi / 2).min() >= 0.3
    assert _rotation_difference(HEART, math.pi).min() >= 0.15
    assert _rotation_difference(HEART, math.pi / 2).min() >= 0.1


def test_orientation_turns_counter_clockwise_and_the_heart_is_upright() -> None:
    centre = 10 + 44 * 0.5
    coords = torch.arange(64) + 0.5
    right, up = coords[None, :] > centre, coords[:, None] < centre
    ellipse = data.render(ELLIPSE, 1.0, math.pi / 4, 0.5, 0.5).bool()
    # Long axis from lower left to upper right: more pixels up-right than up-left.
    assert (ellipse & up & right).sum() > 2 * (ellipse & up & ~right).sum()
    heart = data.render(HEART, 1.0, 0.0, 0.5, 0.5).bool()
    upside_down = data.render(HEART, 1.0, math.pi, 0.5, 0.5).bool()
    assert (heart & up).sum() > 1.1 * (heart & ~up).sum()
    assert (upside_down & ~up).sum() > 1.1 * (upside_down & up).sum()
    # The cleft between the lobes: some row of the upright heart holds two separate runs.
    runs = (heart[:, 1:] & ~heart[:, :-1]).sum(1) + heart[:, 0]
    assert runs.max() == 2


def test_the_three_shapes_differ() -> None:
    for scale, orientation in ((0.5, 0.3), (1.0, 2.0)):
        images = data.render(torch.arange(3), scale, orientation, 0.4, 0.6)
        for a, b in itertools.combinations(range(3), 2):
            assert (images[a] != images[b]).sum() >= 0.15 * images[a].sum()


def test_render_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="shape must be in"):
        data.render(3, 1.0, 0.0, 0.5, 0.5)
    with pytest.raises(ValueError, match="scale must be > 0"):
        data.render(0, 0.0, 0.0, 0.5, 0.5)
    with pytest.raises(ValueError, match="pos_y must be finite, got nan"):
        data.render(0, 1.0, 0.0, 0.5, float("nan"))
    with pytest.raises(ValueError, match="must broadcast together"):
        data.render(torch.zeros(3, dtype=torch.int64), torch.ones(2), 0.0, 0.5, 0.5)
    with pytest.raises(TypeError, match="shape must hold integer shape ids"):
        data.render(torch.zeros(3), 1.0, 0.0, 0.5, 0.5)


# --- the dataset: items, subsets, DataLoader ------------------------------------------------------


def test_items_match_the_batched_renderer() -> None:
    subset = data.dsprites(50, seed=4)
    assert len(subset) == 50
    assert torch.equal(subset.indices, subset.indices.unique())  # distinct, in grid order
    assert torch.equal(subset.indices, data.dsprites(50, seed=4).indices)
    assert not torch.equal(subset.indices, data.dsprites(50, seed=5).indices)
    x, y = subset[7]
    assert x.shape == (1, 64, 64) and x.dtype == torch.float32 and y.dtype == torch.int64
    grid_index = subset.indices[7]
    assert torch.equal(x, DSprites.images(grid_index[None])[0])
    assert torch.equal(y, DSprites.factors(grid_index))
    xs, ys = subset.batch(torch.tensor([7, 0, -1]))
    assert torch.equal(xs[0], x) and torch.equal(ys[2], DSprites.factors(subset.indices[-1]))
    with pytest.raises(IndexError):
        subset[50]
    assert len(list(iter(data.dsprites(3)))) == 3


def test_dataset_pickles_and_works_with_dataloader_workers() -> None:
    subset = data.dsprites(40, seed=2)
    restored = pickle.loads(pickle.dumps(subset))
    assert torch.equal(restored.indices, subset.indices)
    loader = torch.utils.data.DataLoader(subset, batch_size=16, num_workers=2)
    batches = list(loader)
    assert [len(x) for x, _ in batches] == [16, 16, 8]
    x, y = batches[1]
    expected_x, expected_y = subset.batch(torch.arange(16, 32))
    assert torch.equal(x, expected_x) and torch.equal(y, expected_y)


# --- moving sprites -------------------------------------------------------------------------------


def test_moving_sprites_items_and_determinism() -> None:
    sequences = data.moving_sprites(6, seq_len=12, seed=1)
    assert len(sequences) == 6 and sequences.input_shape == (12, 1, 64, 64)
    frames, factors = sequences[2]
    assert frames.shape == (12, 1, 64, 64) and frames.dtype == torch.float32
    assert factors.shape == (12, 5) and factors.dtype == torch.float32
    assert set(frames.unique().tolist()) == {0.0, 1.0}
    again, _ = data.moving_sprites(6, seq_len=12, seed=1)[2]
    other, _ = data.moving_sprites(6, seq_len=12, seed=2)[2]
    assert torch.equal(frames, again) and not torch.equal(frames, other)
    # Shape and scale are fixed per sequence; positions stay in [0, 1].
    assert (factors[:, 0] == factors[0, 0]).all() and (factors[:, 1] == factors[0, 1]).all()
    assert factors[:, 3:].min() >= 0 and factors[:, 3:].max() <= 1
    x, y = next(iter(torch.utils.data.DataLoader(sequences, batch_size=4)))
    assert x.shape == (4, 12, 1, 64, 64) and y.shape == (4, 12, 5)


def test_moving_sprite_velocity_is_constant_between_bounces() -> None:
    sequences = data.moving_sprites(40, seq_len=10, seed=0, speed=(0.03, 0.05))
    frames, factors = sequences.batch(torch.arange(40))
    positions = factors[..., 3:].double()
    step = positions[:, 1:] - positions[:, :-1]
    straight = (step - step[:, :1]).abs().amax((1, 2)) < FLOAT32_ORDER_ONE.atol  # sequences with no bounce
    assert 5 <= int(straight.sum()) < 40
    centroids = _centroid(frames[straight, :, 0])
    pixel_step = centroids[:, 1:] - centroids[:, :-1]
    expected = 44 * step[straight]
    assert (pixel_step - expected).abs().max() < CENTROID_STEP_ATOL
    assert ((44 * step[straight, 0]).norm(dim=-1) > 1.3).all()  # a visible motion, 1.3 px a frame or more


def _simulate_bounce(start: list[float], velocity: list[float], steps: int) -> list[list[float]]:
    """Positions of a point moving at ``velocity`` per frame inside [0, 1]^2, reflected at the walls."""
    position, velocity, path = list(start), list(velocity), []
    for _ in range(steps):
        path.append(list(position))
        for axis in range(2):
            position[axis] += velocity[axis]
            if position[axis] > 1:
                position[axis], velocity[axis] = 2 - position[axis], -velocity[axis]
            elif position[axis] < 0:
                position[axis], velocity[axis] = -position[axis], -velocity[axis]
    return path


def test_moving_sprites_bounce_off_the_walls_or_wrap() -> None:
    sequences = data.moving_sprites(30, seq_len=40, seed=3, speed=(0.08, 0.1))
    positions = sequences.factor_values(torch.arange(30))[..., 3:]
    expected = [
        _simulate_bounce(start, velocity, 40)
        for start, velocity in zip(sequences.start.tolist(), sequences.velocity.tolist(), strict=True)
    ]
    assert torch.allclose(positions, torch.tensor(expected, dtype=torch.float64), **FLOAT64_TRAJECTORY)
    step = positions[:, 1:] - positions[:, :-1]
    assert (step.sign() != step[:, :1].sign()).any()  # some sprites did bounce
    wrapping = data.moving_sprites(30, seq_len=40, seed=3, speed=(0.08, 0.1), boundary="wrap")
    wrapped = wrapping.factor_values(torch.arange(30))[..., 3:]
    unwrapped = wrapping.start[:, None] + torch.arange(40, dtype=torch.float64)[:, None] * wrapping.velocity[:, None]
    assert torch.allclose(wrapped, torch.remainder(unwrapped, 1.0), **FLOAT64_TRAJECTORY)
    assert wrapped.min() >= 0 and wrapped.max() < 1 and (unwrapped > 1).any()
    with pytest.raises(ValueError, match="boundary must be"):
        data.moving_sprites(2, boundary="torus")


def test_moving_sprites_rotate_at_a_constant_rate() -> None:
    still = data.moving_sprites(5, seq_len=8, seed=0).factor_values(torch.arange(5))
    assert (still[:, :, 2] == still[:, :1, 2]).all()
    spin = data.moving_sprites(5, seq_len=8, seed=0, angular_speed=0.2).factor_values(torch.arange(5))
    turn = torch.remainder(spin[:, 1:, 2] - spin[:, :-1, 2] + math.pi, 2 * math.pi) - math.pi
    assert torch.allclose(turn, turn[:, :1].expand_as(turn), **FLOAT64_TRAJECTORY)
    assert turn.abs().max() <= 0.2 and (turn[:, 0].abs() > 1e-3).all()
    assert spin[..., 2].min() >= 0 and spin[..., 2].max() < 2 * math.pi


# --- loaders: round trips -------------------------------------------------------------------------


def _items(dataset: data.VAEDataset) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return torch.stack(xs), torch.stack(ys)


def test_npy_round_trip_of_images_and_flat_vectors(tmp_path: Path) -> None:
    images = np.random.default_rng(0).random((5, 7, 9), dtype=np.float32)
    np.save(tmp_path / "images.npy", images)
    dataset = data.array_file(tmp_path / "images.npy")
    assert dataset.input_shape == (1, 7, 9) and dataset.num_classes is None and dataset.labels is None
    x, y = _items(dataset)
    assert torch.equal(x, torch.from_numpy(images)[:, None]) and (y == -1).all() and y.dtype == torch.int64
    flat = np.random.default_rng(1).random((4, 12)).astype(np.float64)
    np.save(tmp_path / "flat.npy", flat)
    x, _ = _items(data.array_file(tmp_path / "flat.npy"))
    assert x.shape == (4, 12) and x.dtype == torch.float32
    assert torch.allclose(x, torch.from_numpy(flat).float())


def test_npz_with_key_labels_and_channels_last_uint8(tmp_path: Path) -> None:
    pixels = np.random.default_rng(2).integers(0, 256, (6, 8, 10, 3), dtype=np.uint8)
    pixels[0, 0, 0] = (0, 128, 255)
    labels = np.array([3, 0, 1, 3, 2, 0], dtype=np.int32)
    np.savez(tmp_path / "named.npz", pictures=pixels, labels=labels, other=np.zeros(3))
    dataset = data.array_file(tmp_path / "named.npz", key="pictures")
    assert dataset.input_shape == (3, 8, 10)
    assert dataset.num_classes == 4 and dataset.labels.tolist() == labels.tolist()
    x, y = _items(dataset)
    assert torch.equal(x, torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255)
    assert x[0, :, 0, 0].tolist() == pytest.approx([0.0, 128 / 255, 1.0])
    assert y.tolist() == labels.tolist()
    # Default key 'x', labels 'y'; channels-first kept as it is; bool read as 0/1.
    chw = np.random.default_rng(3).random((4, 3, 5, 5)) > 0.5
    np.savez(tmp_path / "default.npz", x=chw, y=np.arange(4))
    x, y = _items(data.array_file(tmp_path / "default.npz"))
    assert torch.equal(x, torch.from_numpy(chw).float()) and y.tolist() == [0, 1, 2, 3]
    # Ambiguous (N, 3, H, 3): read channels-first, as documented.
    np.save(tmp_path / "ambiguous.npy", np.zeros((2, 3, 8, 3), dtype=np.uint8))
    assert data.array_file(tmp_path / "ambiguous.npy").input_shape == (3, 8, 3)
    # The only array besides labels is the data, whatever its name.
    np.savez(tmp_path / "single.npz", faces=chw[:, :1])
    assert data.array_file(tmp_path / "single.npz").input_shape == (1, 5, 5)


def test_image_folder_round_trip_flat_grayscale_resized_and_labelled(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 256, (3, 6, 5, 3), dtype=np.uint8)
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, image in enumerate(pixels):
        Image.fromarray(image).save(flat / f"img{i}.png")
    (flat / "notes.txt").write_text("not an image")
    dataset = data.image_folder(flat)
    assert len(dataset) == 3 and dataset.input_shape == (3, 6, 5) and dataset.num_classes is None
    x, y = _items(dataset)
    assert torch.equal(x, torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255) and (y == -1).all()
    gray = data.image_folder(flat, grayscale=True, size=4)
    assert gray.input_shape == (1, 4, 4) and gray[0][0].shape == (1, 4, 4)
    assert 0.0 <= gray[0][0].min() and gray[0][0].max() <= 1.0
    classes = tmp_path / "classes"
    for name, count in (("cats", 2), ("dogs", 1)):
        (classes / name / "deeper").mkdir(parents=True)
        for i in range(count):
            Image.fromarray(pixels[i]).save(classes / name / "deeper" / f"{i}.PNG")
    labelled = data.image_folder(classes)
    assert labelled.classes == ["cats", "dogs"] and labelled.num_classes == 2
    assert labelled.labels.tolist() == [0, 0, 1] and _items(labelled)[1].tolist() == [0, 0, 1]
    batches = list(torch.utils.data.DataLoader(labelled, batch_size=2))
    assert batches[0][0].shape == (2, 3, 6, 5)


def _write_idx(path: Path, magic: int, array: np.ndarray, *, compress: bool = False, extra: bytes = b"") -> None:
    raw = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes() + extra
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_round_trip_with_labels(tmp_path: Path, compress: bool) -> None:
    images = np.random.default_rng(5).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = np.array([5, 0, 4, 1, 9, 2, 1], dtype=np.uint8)
    suffix = ".gz" if compress else ""
    images_path = tmp_path / f"train-images-idx3-ubyte{suffix}"
    labels_path = tmp_path / f"train-labels-idx1-ubyte{suffix}"
    _write_idx(images_path, 0x803, images, compress=compress)
    _write_idx(labels_path, 0x801, labels, compress=compress)
    dataset = data.mnist_idx(images_path, labels_path)
    assert dataset.input_shape == (1, 28, 28) and dataset.num_classes == 10
    x, y = _items(dataset)
    assert torch.equal(x, torch.from_numpy(images)[:, None].float() / 255)
    assert y.tolist() == labels.tolist()
    unlabelled = data.mnist_idx(images_path)
    assert unlabelled.labels is None and unlabelled[0][1].item() == -1
    # load() finds the labels file beside the images.
    assert data.load(str(images_path)).labels.tolist() == labels.tolist()


def test_load_dispatches_on_the_spec(tmp_path: Path) -> None:
    assert isinstance(data.load("dsprites", size=10, seed=1), DSprites) and len(data.load("DSprites", size=10)) == 10
    assert len(data.load("moving_sprites", num_sequences=3, seq_len=4)) == 3
    np.save(tmp_path / "a.npy", np.zeros((2, 3), dtype=np.float32))
    assert data.load(tmp_path / "a.npy").input_shape == (3,)
    np.savez(tmp_path / "b.npz", images=np.zeros((2, 4, 4), dtype=np.uint8))
    assert data.load(str(tmp_path / "b.npz")).input_shape == (1, 4, 4)
    folder = tmp_path / "pics"
    folder.mkdir()
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(folder / "a.bmp")
    assert data.load(folder, grayscale=True).input_shape == (1, 4, 4)


@pytest.mark.parametrize(
    "make",
    [
        lambda root: data.dsprites(4),
        lambda root: data.moving_sprites(3, seq_len=2),
        lambda root: data.load(root / "b.npz"),
        lambda root: data.load(root / "pics"),
    ],
    ids=["dsprites", "moving_sprites", "npz", "image_folder"],
)
def test_every_dataset_keeps_the_item_contract(tmp_path: Path, make) -> None:
    np.savez(tmp_path / "b.npz", x=np.zeros((3, 4, 4), dtype=np.uint8), y=np.array([0, 2, 1]))
    (tmp_path / "pics").mkdir()
    for name in ("a.jpg", "b.gif"):
        Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(tmp_path / "pics" / name)
    dataset = make(tmp_path)
    x, y = dataset[0]
    assert x.dtype == torch.float32 and tuple(x.shape) == dataset.input_shape
    assert isinstance(y, torch.Tensor)
    assert dataset.num_classes is None or (dataset.labels is not None and dataset.labels.shape == (len(dataset),))
    xs, ys = next(iter(torch.utils.data.DataLoader(dataset, batch_size=2)))
    assert xs.shape == (2, *dataset.input_shape) and ys.shape[0] == 2


# --- loaders: errors ------------------------------------------------------------------------------


def test_missing_paths_raise_file_not_found_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "x.npz"
    for call in (
        lambda: data.array_file(missing),
        lambda: data.image_folder(missing.parent),
        lambda: data.mnist_idx(missing),
        lambda: data.load(missing),
        lambda: data.load(str(tmp_path / "nowhere")),
    ):
        with pytest.raises(FileNotFoundError, match="nowhere"):
            call()


def test_bad_idx_files_raise_value_error_naming_the_file(tmp_path: Path) -> None:
    images = np.zeros((3, 4, 4), dtype=np.uint8)
    bad_magic = tmp_path / "bad-images-idx3-ubyte"
    _write_idx(bad_magic, 0x801, images)
    with pytest.raises(ValueError, match=r"bad-images-idx3-ubyte.*magic number 0x00000803, found 0x00000801"):
        data.mnist_idx(bad_magic)
    truncated = tmp_path / "short-images-idx3-ubyte.gz"
    truncated.write_bytes(gzip.compress(struct.pack(">4I", 0x803, 3, 4, 4) + bytes(40)))
    with pytest.raises(ValueError, match=r"short-images-idx3-ubyte\.gz: size mismatch.*48 bytes.*has 40"):
        data.mnist_idx(truncated)
    overlong = tmp_path / "long-images-idx3-ubyte"
    _write_idx(overlong, 0x803, images, extra=b"\x00")
    with pytest.raises(ValueError, match=r"long-images-idx3-ubyte: size mismatch.*48 bytes.*has 49"):
        data.mnist_idx(overlong)
    good = tmp_path / "good-images-idx3-ubyte"
    _write_idx(good, 0x803, images)
    few_labels = tmp_path / "few-labels-idx1-ubyte"
    _write_idx(few_labels, 0x801, np.zeros(2, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"few-labels-idx1-ubyte: holds 2 labels but .*good-images-idx3-ubyte holds 3"):
        data.mnist_idx(good, few_labels)


def test_empty_folder_and_unusable_arrays_raise_value_error_naming_the_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"empty.* holds no image"):
        data.image_folder(empty)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(mixed / "a.png")
    Image.fromarray(np.zeros((5, 4), dtype=np.uint8)).save(mixed / "b.png")
    (mixed / "c.jpg").write_bytes(b"not a jpeg")
    folder = data.image_folder(mixed)
    assert folder[0][0].shape == (3, 4, 4)
    with pytest.raises(ValueError, match=r"b\.png: image is 4 x 5 but the folder's first image is 4 x 4; pass size="):
        folder[1]
    with pytest.raises(ValueError, match=r"c\.jpg: not a readable image"):
        folder[2]
    np.savez(tmp_path / "ambiguous.npz", a=np.zeros((2, 3)), b=np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"ambiguous\.npz: cannot tell which array holds the data.*\['a', 'b'\]"):
        data.array_file(tmp_path / "ambiguous.npz")
    with pytest.raises(ValueError, match=r"ambiguous\.npz: no array named key='c'"):
        data.array_file(tmp_path / "ambiguous.npz", key="c")
    (tmp_path / "garbage.npy").write_bytes(b"certainly not numpy")
    with pytest.raises(ValueError, match=r"garbage\.npy: expected a \.npy array"):
        data.array_file(tmp_path / "garbage.npy")
    np.save(tmp_path / "ints.npy", np.zeros((2, 3), dtype=np.int32))
    with pytest.raises(ValueError, match=r"ints\.npy: expected uint8 .*bool or floating data, got int32"):
        data.array_file(tmp_path / "ints.npy")
    np.save(tmp_path / "cube.npy", np.zeros((2, 2, 2, 2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match=r"cube\.npy: expected an array of shape \(N, D\)"):
        data.array_file(tmp_path / "cube.npy")
    np.savez(tmp_path / "bad_labels.npz", x=np.zeros((3, 2)), y=np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError, match=r"bad_labels\.npz \(labels 'y'\): labels must have shape \(3,\)"):
        data.array_file(tmp_path / "bad_labels.npz")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.txt' is not a data set fastvae can load; valid: 'dsprites'"):
        data.load(tmp_path / "notes.txt")
