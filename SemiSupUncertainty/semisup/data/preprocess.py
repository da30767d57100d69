"""Deterministic preprocessing shared by training, validation and prediction.

``image -> [resample to data.target_spacing] -> intensity normalisation``, and the
way back (:func:`restore_to_reference`) for predictions.

Resampled grid
    The grid keeps the image's physical extent (the outer voxel edges) and
    direction exactly: ``size = round(extent / target_spacing)`` and
    ``spacing = extent / size``, so the spacing equals ``target_spacing`` up to the
    rounding of the voxel count. Because the grid follows from the reference image
    and the array shape alone, :func:`restore_to_reference` needs no config.

Padding
    Preprocessing never pads. Training pads each random crop (smaller than the
    patch along an axis when the volume is) to ``data.patch_size`` with zeros
    (MONAI ``SpatialPadd`` in :mod:`semisup.data.loaders`), as UA-MT pads after its
    z-score. Prediction and validation feed the unpadded preprocessed volume to
    MONAI's ``sliding_window_inference``, which pads to the ROI itself and crops
    its output back, so predictions are on the preprocessed grid and
    :func:`restore_to_reference` maps them onto the input grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
from monai.transforms import NormalizeIntensity, ScaleIntensityRange
from monai.utils import convert_to_numpy

from ..config import ConfigError, DataConfig, channel_modalities
from .dataset import IGNORE_INDEX
from .errors import DataError
from .io import Geometry, array_to_image, channels_to_array, geometry_of, image_to_array, same_geometry

__all__ = [
    "preprocess_image",
    "preprocess_label",
    "normalize_intensity",
    "preprocessed_geometry",
    "resample_to_grid",
    "restore_to_reference",
    "restore_label_from_probabilities",
]

#: Largest value of an 8-bit RGB channel (PNG/JPG/BMP), mapped to 1.
RGB_MAX = 255.0

_INTERPOLATORS = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}


def _as_geometry(obj: sitk.Image | Geometry) -> Geometry:
    return obj if isinstance(obj, Geometry) else geometry_of(obj)


def _grid_with_size(geom: Geometry, size: Sequence[int]) -> Geometry:
    """The grid of ``size`` voxels covering exactly the extent of ``geom``."""
    size_new = np.asarray(size, dtype=np.int64)
    if tuple(int(s) for s in size_new) == geom.size:
        return geom
    extent = np.asarray(geom.size, dtype=np.float64) * np.asarray(geom.spacing, dtype=np.float64)
    spacing = extent / size_new
    # Keep the outer edge of the first voxel: origin is a voxel centre, half a voxel inside.
    shift = geom.direction_matrix @ ((spacing - np.asarray(geom.spacing)) / 2.0)
    return Geometry(
        size=tuple(int(s) for s in size_new),
        spacing=tuple(float(v) for v in spacing),
        origin=tuple(float(v) for v in np.asarray(geom.origin) + shift),
        direction=geom.direction,
    )


def preprocessed_geometry(image: sitk.Image | Geometry, target_spacing: Sequence[float] | None) -> Geometry:
    """The grid :func:`preprocess_image` puts ``image`` on (the image's own grid when
    ``target_spacing`` is ``None`` or gives the same voxel count).

    A 2D image takes the first two numbers of a three-number ``target_spacing``.
    """
    geom = _as_geometry(image)
    if target_spacing is None:
        return geom
    target = [float(v) for v in target_spacing]
    if geom.dimension == 2 and len(target) == 3:
        target = target[:2]
    if len(target) != geom.dimension:
        raise DataError(f"data.target_spacing {target} has {len(target)} numbers but the image is {geom.dimension}D")
    if any(v <= 0 for v in target):
        raise DataError(f"data.target_spacing must be positive, got {target}")
    extent = np.asarray(geom.size, dtype=np.float64) * np.asarray(geom.spacing, dtype=np.float64)
    size = np.maximum(1, np.round(extent / np.asarray(target))).astype(np.int64)
    return _grid_with_size(geom, size)


def resample_to_grid(img: sitk.Image, grid: sitk.Image | Geometry, interpolation: str = "linear") -> sitk.Image:
    """``img`` resampled onto ``grid`` (identity transform, zero outside), same pixel type."""
    if interpolation not in _INTERPOLATORS:
        raise ValueError(f"interpolation must be 'linear' or 'nearest', got {interpolation!r}")
    geom = _as_geometry(grid)
    f = sitk.ResampleImageFilter()
    f.SetSize([int(s) for s in geom.size])
    f.SetOutputSpacing([float(v) for v in geom.spacing])
    f.SetOutputOrigin([float(v) for v in geom.origin])
    f.SetOutputDirection([float(v) for v in geom.direction])
    f.SetInterpolator(_INTERPOLATORS[interpolation])
    f.SetDefaultPixelValue(0.0)
    f.SetOutputPixelType(img.GetPixelID())
    return f.Execute(img)


def _channel_transform(modality: str, cfg: DataConfig):
    if modality == "CT":
        lo, hi = (float(v) for v in cfg.ct_window)
        if not hi > lo:
            raise DataError(f"data.ct_window must be [low, high] with high > low, got {cfg.ct_window}")
        return ScaleIntensityRange(a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True, dtype=np.float32)
    if modality == "MR":
        return NormalizeIntensity(nonzero=False, dtype=np.float32)
    if modality == "RGB":
        return ScaleIntensityRange(
            a_min=0.0, a_max=RGB_MAX, b_min=0.0, b_max=1.0, clip=False, dtype=np.float32
        )
    raise DataError(f"data.modality must be 'MR', 'CT' or 'RGB', got {modality!r}")


def normalize_intensity(arr: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """MONAI intensity normalisation of a ``(C, *spatial)`` array, channel by channel, float32.

    Each channel by its modality (:func:`semisup.config.channel_modalities`): MR,
    ``NormalizeIntensity(nonzero=False)``, a z-score over the whole volume (population
    std), as UA-MT normalises LA; CT, ``ScaleIntensityRange`` from ``ct_window`` to
    [0, 1], clipped; RGB, 0..255 to [0, 1] (nnU-Net's ``rgb_to_0_1``).
    """
    arr = np.asarray(arr, dtype=np.float32)
    try:
        modalities = channel_modalities(cfg, arr.shape[0])
    except ConfigError as exc:
        raise DataError(str(exc)) from None
    out = np.empty(arr.shape, dtype=np.float32)
    for c, modality in enumerate(modalities):
        out[c] = convert_to_numpy(_channel_transform(modality, cfg)(arr[c : c + 1]), dtype=np.float32)[0]
    return out


def preprocess_image(img: sitk.Image, cfg: DataConfig) -> np.ndarray:
    """Network input of one image: float32 ``(C, *spatial)`` in (x, y, z) order.

    ``img`` may have several components per voxel (:func:`semisup.data.io.read_channels`),
    one per channel. Resampled with linear interpolation to :func:`preprocessed_geometry`
    when ``cfg.target_spacing`` is set, then normalised channel by channel
    (:func:`normalize_intensity`).
    """
    grid = preprocessed_geometry(img, cfg.target_spacing)
    vector = img.GetNumberOfComponentsPerPixel() > 1
    img = sitk.Cast(img, sitk.sitkVectorFloat32 if vector else sitk.sitkFloat32)
    if not same_geometry(grid, img):
        img = resample_to_grid(img, grid, "linear")
    return normalize_intensity(channels_to_array(img), cfg)


def preprocess_label(
    label: sitk.Image,
    cfg: DataConfig,
    reference: sitk.Image | Geometry | None = None,
    ignore_label: int | None = None,
) -> np.ndarray:
    """Label map on the preprocessed grid: uint8 ``(1, *spatial)``.

    Parameters
    ----------
    reference:
        The label's image; the label is put on that image's preprocessed grid
        (nearest neighbour), so both arrays always have the same shape.
    ignore_label:
        The dataset's ``ignore`` value; its voxels become :data:`IGNORE_INDEX` (255),
        the one value the losses and metrics skip.
    """
    grid = preprocessed_geometry(reference if reference is not None else label, cfg.target_spacing)
    if not same_geometry(grid, label):
        label = resample_to_grid(label, grid, "nearest")
    arr = image_to_array(label)
    if arr.dtype.kind == "f":
        arr = np.rint(arr)
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise DataError(f"label values {arr.min()}..{arr.max()} do not fit 0..255")
    arr = arr.astype(np.uint8)
    if ignore_label is not None and ignore_label != IGNORE_INDEX:
        arr[arr == ignore_label] = IGNORE_INDEX
    return arr[None]


def restore_to_reference(
    arr: np.ndarray, reference: sitk.Image | Geometry, interpolation: str = "linear"
) -> np.ndarray:
    """Map ``arr`` ``(C, *spatial)`` from the preprocessed grid of ``reference`` back to
    ``reference``'s own grid.

    The preprocessed grid is recovered from ``reference`` and ``arr``'s shape (see the
    module docstring), so this is the identity when no resampling happened. Use
    ``"linear"`` for probabilities and uncertainty maps (float32 result) and
    ``"nearest"`` for label maps (dtype kept); for the smoothest labels, restore
    probabilities linearly and take the argmax.
    """
    arr = np.asarray(arr)
    ref = _as_geometry(reference)
    if arr.ndim != ref.dimension + 1:
        raise DataError(f"expected an array (C, *spatial) for a {ref.dimension}D reference, got shape {arr.shape}")
    if tuple(arr.shape[1:]) == ref.size:
        return arr
    if interpolation not in _INTERPOLATORS:
        raise ValueError(f"interpolation must be 'linear' or 'nearest', got {interpolation!r}")
    grid = _grid_with_size(ref, arr.shape[1:])
    linear = interpolation == "linear"
    if linear:
        arr = arr.astype(np.float32, copy=False)
    elif arr.dtype == bool:
        arr = arr.astype(np.uint8)
    out = np.empty((arr.shape[0], *ref.size), dtype=arr.dtype)
    for c in range(arr.shape[0]):
        restored = resample_to_grid(array_to_image(arr[c], grid), ref, interpolation)
        out[c] = image_to_array(restored)
    return out


def restore_label_from_probabilities(probabilities: np.ndarray, reference: sitk.Image | Geometry) -> np.ndarray:
    """Label map on ``reference``'s own grid: the argmax of the class probabilities
    ``(C, *spatial)`` restored there with linear interpolation.

    Restoring the label itself by nearest neighbour copies the coarse voxels of the
    preprocessed grid (staircase boundaries) when the model ran at a coarser spacing;
    interpolating the probabilities first puts each boundary where the classes are
    equally likely, between the coarse voxels. Classes are restored one at a time with
    a running argmax, so memory is two float volumes on the reference grid, not ``C``.
    Ties go to the lower class, as ``numpy.argmax``. Returns uint8 ``(*spatial)``.
    """
    probs = np.asarray(probabilities)
    ref = _as_geometry(reference)
    if probs.ndim != ref.dimension + 1:
        raise DataError(f"expected probabilities (C, *spatial) for a {ref.dimension}D reference, got shape {probs.shape}")
    if probs.shape[0] > 256:
        raise DataError(f"{probs.shape[0]} classes do not fit a uint8 label map")
    best_p: np.ndarray | None = None
    label = np.zeros(ref.size, dtype=np.uint8)
    for c in range(probs.shape[0]):
        p_c = restore_to_reference(probs[c : c + 1], reference, "linear")[0]
        if best_p is None:
            best_p = p_c.astype(np.float32, copy=True)
            continue
        better = p_c > best_p
        label[better] = c
        best_p[better] = p_c[better]
    return label
