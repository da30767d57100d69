"""semisup.data.preprocess: hand-checked normalisation, resampling and restoring."""

from __future__ import annotations

import numpy as np
import pytest

from semisup.config import DataConfig
from semisup.data import (
    DataError,
    Geometry,
    array_to_image,
    geometry_of,
    preprocess_image,
    preprocess_label,
    preprocessed_geometry,
    restore_to_reference,
)

EYE = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def _img(arr: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=EYE):
    return array_to_image(arr, Geometry(arr.shape, spacing, origin, direction))


def test_mr_z_score_over_the_whole_volume():
    arr = np.array([1, 2, 3, 4], np.int16).reshape(4, 1, 1)
    out = preprocess_image(_img(arr), DataConfig(modality="MR"))
    assert out.shape == (1, 4, 1, 1) and out.dtype == np.float32
    # mean 2.5, population std sqrt(1.25)
    np.testing.assert_allclose(out.ravel(), (np.array([1, 2, 3, 4]) - 2.5) / np.sqrt(1.25), rtol=1e-6)
    rng = np.random.default_rng(0)
    out = preprocess_image(_img(rng.normal(50, 7, (6, 5, 4)).astype(np.float32)), DataConfig(modality="MR"))
    assert abs(out.mean()) < 1e-5 and abs(out.std() - 1) < 1e-5


def test_ct_window_clipped_to_unit_range():
    arr = np.array([-2000, -1000, 0, 500, 1000, 3000], np.int16).reshape(6, 1, 1)
    out = preprocess_image(_img(arr), DataConfig(modality="CT", ct_window=[-1000.0, 1000.0]))
    np.testing.assert_allclose(out.ravel(), [0.0, 0.0, 0.5, 0.75, 1.0, 1.0], atol=1e-7)


def test_resampled_grid_keeps_extent_and_direction():
    c, s = np.cos(0.4), np.sin(0.4)
    oblique = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)
    geom = Geometry((10, 8, 5), (1.0, 1.0, 3.0), (5.0, -2.0, 1.0), oblique)
    grid = preprocessed_geometry(geom, [2.0, 2.0, 1.0])
    assert grid.size == (5, 4, 15)
    np.testing.assert_allclose(grid.spacing, (2.0, 2.0, 1.0))
    assert grid.direction == oblique
    # The outer corner of the first voxel (index -0.5) is the same physical point.
    corner = lambda g: np.asarray(g.origin) - g.direction_matrix @ (np.asarray(g.spacing) / 2)  # noqa: E731
    np.testing.assert_allclose(corner(grid), corner(geom), atol=1e-9)
    # Rounding the voxel count: 10 mm at 3 mm -> 3 voxels of 3.333 mm covering the same 10 mm.
    assert preprocessed_geometry(Geometry((10,), (1.0,), (0.0,), (1.0,)), [3.0]).spacing == pytest.approx((10 / 3,))
    with pytest.raises(DataError, match="target_spacing .* has 2 numbers but the image is 3D"):
        preprocessed_geometry(geom, [1.0, 1.0])


def test_resampling_images_linear_and_labels_nearest_on_the_same_grid():
    cfg = DataConfig(modality="CT", ct_window=[0.0, 100.0], target_spacing=[2.0, 2.0, 2.0])
    image = _img(np.full((8, 6, 4), 50, np.int16))
    out = preprocess_image(image, cfg)
    assert out.shape == (1, 4, 3, 2)
    np.testing.assert_allclose(out, 0.5, atol=1e-6)  # no zero border from the resampling
    lab = np.zeros((8, 6, 4), np.uint8)
    lab[4:, :, :] = 2
    lab_out = preprocess_label(_img(lab), cfg, reference=image)
    assert lab_out.shape == (1, 4, 3, 2) and lab_out.dtype == np.uint8
    np.testing.assert_array_equal(lab_out[0, :, 0, 0], [0, 0, 2, 2])


def test_restore_is_identity_without_resampling_and_inverts_it_otherwise():
    ref = _img(np.zeros((8, 6, 4), np.float32), spacing=(0.5, 0.5, 1.0), origin=(3.0, 4.0, 5.0))
    arr = np.random.default_rng(1).random((2, 8, 6, 4)).astype(np.float32)
    assert restore_to_reference(arr, ref) is arr
    cfg = DataConfig(target_spacing=[1.0, 1.0, 2.0])
    grid = preprocessed_geometry(ref, cfg.target_spacing)
    assert grid.size == (4, 3, 2)
    probs = np.full((2, *grid.size), 0.25, np.float32)
    back = restore_to_reference(probs, ref, "linear")
    assert back.shape == (2, 8, 6, 4) and back.dtype == np.float32
    np.testing.assert_allclose(back, 0.25, atol=1e-6)
    # A label of whole coarse voxels comes back exactly with nearest neighbour.
    coarse = np.zeros((1, *grid.size), np.uint8)
    coarse[0, 2:, :, :] = 1
    fine = restore_to_reference(coarse, ref, "nearest")
    assert fine.dtype == np.uint8
    expected = np.zeros((1, 8, 6, 4), np.uint8)
    expected[0, 4:] = 1
    np.testing.assert_array_equal(fine, expected)
    assert geometry_of(ref).size == (8, 6, 4)


def test_label_from_linearly_restored_probabilities_hand_computed():
    from semisup.data import restore_label_from_probabilities

    ref = _img(np.zeros((8, 2, 2), np.float32))  # 1 mm voxels, centres x = 0..7
    grid = preprocessed_geometry(ref, [2.0, 2.0, 2.0])
    assert grid.size == (4, 1, 1) and grid.origin[0] == pytest.approx(0.5)  # coarse centres 0.5, 2.5, 4.5, 6.5
    p1 = np.array([0.0, 0.45, 0.9, 1.0], np.float32).reshape(4, 1, 1)
    probs = np.stack([1.0 - p1, p1])
    # Nearest neighbour copies the coarse argmax (0, 0, 1, 1): the boundary sits at x = 3.5.
    nearest = restore_to_reference(probs.argmax(0)[None].astype(np.uint8), ref, "nearest")[0]
    np.testing.assert_array_equal(nearest[:, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1])
    # Linear: p1(x = 3) = 0.45 + (3 - 2.5) / 2 * (0.9 - 0.45) = 0.5625 > 0.5 -> class 1;
    # p1(x = 2) = 0.75 * 0.45 = 0.3375 -> class 0. The boundary is where p1 crosses 0.5 (x = 2.72).
    label = restore_label_from_probabilities(probs, ref)
    assert label.dtype == np.uint8 and label.shape == (8, 2, 2)
    np.testing.assert_array_equal(label[:, 0, 0], [0, 0, 0, 1, 1, 1, 1, 1])
    # Same grid: plain argmax; a class count that does not fit uint8 is refused.
    same = np.random.default_rng(0).random((3, 8, 2, 2)).astype(np.float32)
    np.testing.assert_array_equal(restore_label_from_probabilities(same, ref), same.argmax(0))
    with pytest.raises(DataError, match="expected probabilities"):
        restore_label_from_probabilities(same[0], ref)


def test_linear_restore_removes_the_staircase_of_a_coarse_sphere():
    """A sphere predicted at 2x coarser spacing: the argmax of the linearly restored
    probabilities matches the fine reference better than the nearest-neighbour label."""
    from semisup.data import restore_label_from_probabilities

    ref = _img(np.zeros((40, 40, 40), np.float32), origin=(-20.0, -20.0, -20.0))
    centre, radius, width = np.array([0.3, -0.4, 0.2]), 11.3, 1.0  # mm; width of the soft edge

    def distance(geom) -> np.ndarray:
        axes = [geom.origin[i] + geom.spacing[i] * np.arange(geom.size[i]) for i in range(3)]
        x, y, z = np.meshgrid(*axes, indexing="ij")
        return np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2)

    reference = distance(geometry_of(ref)) <= radius
    coarse = preprocessed_geometry(ref, [2.0, 2.0, 2.0])
    p1 = (1.0 / (1.0 + np.exp((distance(coarse) - radius) / width))).astype(np.float32)
    probs = np.stack([1.0 - p1, p1])

    def dice(a, b) -> float:
        return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())

    nearest = restore_to_reference(probs.argmax(0)[None].astype(np.uint8), ref, "nearest")[0] == 1
    linear = restore_label_from_probabilities(probs, ref) == 1
    assert linear.shape == reference.shape
    d_nearest, d_linear = dice(nearest, reference), dice(linear, reference)
    # Computed: 0.990 vs 0.943.
    assert d_linear > d_nearest + 0.01, (d_linear, d_nearest)
