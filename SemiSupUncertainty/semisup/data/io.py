"""Image files <-> numpy arrays, keeping the geometry.

This module is the only place that transposes between SimpleITK's array order
``(z, y, x)`` and the project's order ``(x, y, z)`` (ITK's index order, which MONAI
also uses after its channel axis). Every other module sees ``(x, y, z)`` arrays.

:func:`read_image` reads scalar 2D and 3D images (labels, single-channel images);
vector (RGB, multi-layer segmentation) and 4D images raise :class:`DataError` with
the file name. Network inputs of several channels go through :func:`read_channels`:
an MSD 4D file (channels on the last axis), a vector image (RGB PNG/JPG/BMP, a
multi-component NRRD), one file per channel (nnU-Net's ``case_0000``, ``case_0001``,
same grid required) or a DICOM series folder; the result is one 2D/3D image whose
voxels have ``C`` components, and :func:`channels_to_array` gives ``(C, x, y[, z])``.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np
import SimpleITK as sitk

from .errors import DataError

__all__ = [
    "Geometry",
    "read_image",
    "read_channels",
    "read_channels_geometry",
    "channels_to_array",
    "vector_image_to_array",
    "NATURAL_IMAGE_EXTENSIONS",
    "read_geometry",
    "read_metadata",
    "image_to_array",
    "array_to_image",
    "write_image",
    "save_image",
    "geometry_of",
    "same_geometry",
    "geometry_difference",
    "GEOMETRY_TOLERANCE",
    "orientation_code",
]

#: Relative tolerance for comparing spacing, origin and direction (absolute below 1).
GEOMETRY_TOLERANCE = 1e-4
#: 2D photographs (RGB or grey); SimpleITK reads them through its PNG/JPEG/BMP IO.
NATURAL_IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp")


@dataclass(frozen=True)
class Geometry:
    """The physical grid of an image, in ITK index order (x, y, z).

    Attributes
    ----------
    size:
        Number of voxels along each axis.
    spacing:
        Voxel size in mm along each axis.
    origin:
        Physical position (LPS, mm) of the centre of the first voxel.
    direction:
        Direction cosines, row-major ``dimension x dimension`` as SimpleITK gives them.
    """

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @property
    def dimension(self) -> int:
        return len(self.size)

    @property
    def direction_matrix(self) -> np.ndarray:
        d = self.dimension
        return np.asarray(self.direction, dtype=np.float64).reshape(d, d)

    def to_dict(self) -> dict[str, list[Any]]:
        """JSON-ready plain lists."""
        return {k: list(getattr(self, k)) for k in ("size", "spacing", "origin", "direction")}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "Geometry":
        return cls(
            size=tuple(int(v) for v in raw["size"]),
            spacing=tuple(float(v) for v in raw["spacing"]),
            origin=tuple(float(v) for v in raw["origin"]),
            direction=tuple(float(v) for v in raw["direction"]),
        )


# -- reading ------------------------------------------------------------------------
def _sitk_message(exc: Exception) -> str:
    """The informative last line of a (long, multi-line) SimpleITK exception."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:300]


def _check_supported(path: Path | str, dimension: int, components: int, size: tuple[int, ...]) -> None:
    shape = "x".join(str(s) for s in size)
    if components != 1:
        raise DataError(
            f"{path}: has {components} components per voxel (size {shape}); only scalar images are "
            "supported (for a multi-layer .seg.nrrd, export a labelmap; for RGB, convert to grey levels)"
        )
    if dimension not in (2, 3):
        raise DataError(
            f"{path}: is a {dimension}D image (size {shape}); only 2D and 3D images are supported "
            "(extract one 3D volume, e.g. one time point)"
        )


def _read_dicom_series(folder: Path) -> sitk.Image:
    """The first DICOM series of ``folder`` (SimpleITK ``ImageSeriesReader``, slices sorted
    by position by GDCM)."""
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise DataError(f"{folder}: is a folder without a DICOM series (give an image file or a DICOM folder)")
    if len(ids) > 1:
        raise DataError(f"{folder}: holds {len(ids)} DICOM series; put each series in its own folder")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), ids[0]))
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise DataError(f"{folder}: DICOM series cannot be read ({_sitk_message(exc)})") from None


def read_image(path: str | os.PathLike, vector: bool = False) -> sitk.Image:
    """Read any scalar 2D/3D image SimpleITK can read (NRRD, NIfTI, MHA/MHD, ...).

    ``vector=True`` also accepts several components per voxel (class probabilities);
    read them with :func:`vector_image_to_array`.

    Raises
    ------
    DataError
        The file is missing, unreadable, multi-component (unless ``vector``) or not 2D/3D.
    """
    img = _read_any(path)
    _check_supported(path, img.GetDimension(), 1 if vector else img.GetNumberOfComponentsPerPixel(), img.GetSize())
    return img


def _read_any(path: str | os.PathLike) -> sitk.Image:
    path = Path(path)
    if path.is_dir():
        return _read_dicom_series(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise DataError(f"{path}: cannot be read as an image ({_sitk_message(exc)})") from None


def _split_4d(img: sitk.Image, path: Path | str) -> sitk.Image:
    """An MSD 4D image (x, y, z, C) as a 3D image of C components."""
    size = list(img.GetSize())
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(f"{path}: 4D image with vector voxels is not supported")
    parts = []
    for c in range(size[3]):
        parts.append(sitk.Extract(img, size[:3] + [0], [0, 0, 0, c]))
    return parts[0] if len(parts) == 1 else sitk.Compose(parts)


def read_channels(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> sitk.Image:
    """A network input of one or more channels as one 2D/3D image (``C`` components).

    Parameters
    ----------
    paths:
        One file or DICOM folder (scalar, vector/RGB, or 4D with channels on the last
        axis), or one file per channel, all on the same grid.

    Raises
    ------
    DataError
        A file is missing or unreadable, a 4D file is not (x, y, z, C), or the
        channel files' grids differ (the message names both files and what differs).
    """
    files = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not files:
        raise DataError("no image file given")
    images = []
    for path in files:
        img = _read_any(path)
        dim = img.GetDimension()
        if dim == 4:
            img = _split_4d(img, path)
        elif dim not in (2, 3):
            raise DataError(f"{path}: is a {dim}D image; only 2D, 3D and 4D (x, y, z, channels) images are supported")
        images.append(img)
    if len(images) == 1:
        return images[0]
    first = images[0]
    for path, img in zip(files[1:], images[1:]):
        diff = geometry_difference(img, first)
        if diff:
            raise DataError(f"{path}: channel grid differs from {files[0]} ({diff}); every channel needs the same grid")
    parts = [
        img if img.GetNumberOfComponentsPerPixel() == 1 else sitk.VectorIndexSelectionCast(img, k)
        for img in images
        for k in range(img.GetNumberOfComponentsPerPixel())
    ]
    common = sitk.sitkFloat32 if len({p.GetPixelID() for p in parts}) > 1 else parts[0].GetPixelID()
    return sitk.Compose([sitk.Cast(p, common) for p in parts])


def read_channels_geometry(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> tuple[Geometry, int]:
    """The spatial geometry and channel count of :func:`read_channels`'s result, from the
    headers only (a DICOM folder is read whole)."""
    files = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    geom: Geometry | None = None
    channels = 0
    for path in files:
        path = Path(path)
        if path.is_dir():
            img = _read_dicom_series(path)
            g, c = geometry_of(img), img.GetNumberOfComponentsPerPixel()
        else:
            g, c = _header(path)
        if geom is not None:
            diff = geometry_difference(g, geom)
            if diff:
                raise DataError(f"{path}: channel grid differs from {files[0]} ({diff}); every channel needs the same grid")
        geom = g if geom is None else geom
        channels += c
    assert geom is not None
    return geom, channels


def _header_reader(path: Path) -> sitk.ImageFileReader:
    """A reader that has read ``path``'s header (no voxels), or the :class:`DataError` of :func:`read_image`."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise DataError(f"{path}: cannot be read as an image ({_sitk_message(exc)})") from None
    return reader


def _header(path: Path) -> tuple[Geometry, int]:
    reader = _header_reader(path)
    dim, comps = reader.GetDimension(), reader.GetNumberOfComponents()
    size, spacing, origin = reader.GetSize(), reader.GetSpacing(), reader.GetOrigin()
    direction = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(dim, dim)
    if dim == 4:
        if comps != 1:
            raise DataError(f"{path}: 4D image with vector voxels is not supported")
        comps, dim = int(size[3]), 3
        direction = direction[:3, :3]
    elif dim not in (2, 3):
        raise DataError(f"{path}: is a {dim}D image; only 2D, 3D and 4D (x, y, z, channels) images are supported")
    return (
        Geometry(
            size=tuple(int(s) for s in size[:dim]),
            spacing=tuple(float(v) for v in spacing[:dim]),
            origin=tuple(float(v) for v in origin[:dim]),
            direction=tuple(float(v) for v in direction.ravel()),
        ),
        int(comps),
    )


def channels_to_array(img: sitk.Image) -> np.ndarray:
    """Voxel values ``(C, x, y[, z])`` of a scalar or vector image (``C = 1`` for scalar)."""
    arr = sitk.GetArrayFromImage(img)  # (z, y, x[, C])
    if img.GetNumberOfComponentsPerPixel() == 1:
        return arr.T[None]
    return np.moveaxis(arr, -1, 0).transpose(0, *range(arr.ndim - 1, 0, -1))


def read_metadata(path: str | os.PathLike, key: str) -> str | None:
    """One header field of an image file (no voxel data is read); ``None`` when absent
    or when the file cannot be read as an image."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    return reader.GetMetaData(key) if reader.HasMetaDataKey(key) else None


def read_geometry(path: str | os.PathLike) -> Geometry:
    """The geometry from the file header only (no voxel data is read).

    Raises the same :class:`DataError` as :func:`read_image`.
    """
    path = Path(path)
    reader = _header_reader(path)
    size = tuple(int(s) for s in reader.GetSize())
    _check_supported(path, reader.GetDimension(), reader.GetNumberOfComponents(), size)
    return Geometry(
        size=size,
        spacing=tuple(float(v) for v in reader.GetSpacing()),
        origin=tuple(float(v) for v in reader.GetOrigin()),
        direction=tuple(float(v) for v in reader.GetDirection()),
    )


# -- arrays -------------------------------------------------------------------------
def image_to_array(img: sitk.Image) -> np.ndarray:
    """Voxel values in (x, y, z) order (``(x, y)`` for 2D images).

    The result is a transposed view of one copy of SimpleITK's buffer (so it is
    Fortran-ordered); ``arr[i, j, k]`` is the voxel at ITK index ``(i, j, k)``.
    """
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(
            f"image of size {img.GetSize()} has {img.GetNumberOfComponentsPerPixel()} components per voxel; "
            "only scalar images are supported"
        )
    return sitk.GetArrayFromImage(img).T  # (z, y, x) -> (x, y, z)


def geometry_of(img: sitk.Image) -> Geometry:
    """The :class:`Geometry` of a SimpleITK image."""
    return Geometry(
        size=tuple(int(s) for s in img.GetSize()),
        spacing=tuple(float(v) for v in img.GetSpacing()),
        origin=tuple(float(v) for v in img.GetOrigin()),
        direction=tuple(float(v) for v in img.GetDirection()),
    )


def array_to_image(arr: np.ndarray, reference: sitk.Image | Geometry) -> sitk.Image:
    """An image of ``arr`` (x, y, z) on the grid of ``reference`` (origin, spacing, direction).

    Parameters
    ----------
    arr:
        Scalar array of exactly the reference size, or with one extra trailing axis
        (``(x, y, z, C)``), written as a ``C``-component vector image. ``bool`` is
        stored as ``uint8`` and ``float16`` as ``float32`` (no SimpleITK pixel type).
    reference:
        Image or :class:`Geometry` giving the grid; any direction matrix (oblique too).
    """
    arr = np.asarray(arr)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    elif arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    geom = reference if isinstance(reference, Geometry) else geometry_of(reference)
    size = tuple(geom.size)
    if arr.shape == size:
        img = sitk.GetImageFromArray(np.ascontiguousarray(arr.T), isVector=False)
    elif arr.ndim == len(size) + 1 and arr.shape[:-1] == size:
        # (x, y, z, C) -> (z, y, x, C): reverse the image axes, keep components last.
        order = tuple(reversed(range(len(size)))) + (len(size),)
        img = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(order)), isVector=True)
    else:
        raise DataError(
            f"array of shape {arr.shape} does not fit the reference image of size {size} (x, y, z order)"
        )
    img.SetSpacing([float(v) for v in geom.spacing])
    img.SetOrigin([float(v) for v in geom.origin])
    img.SetDirection([float(v) for v in geom.direction])
    return img


# -- writing ------------------------------------------------------------------------
def save_image(
    img: sitk.Image, path: str | os.PathLike, compress: bool = True, metadata: dict[str, str] | None = None
) -> Path:
    """Write a SimpleITK image atomically: a temporary file in the same folder, then
    :func:`os.replace`, so a reader never sees a half-written file.

    ``metadata`` are extra header fields (NRRD ``key:=value`` lines), e.g. the
    provenance mark of predictions. ``.mhd`` (header + separate raw file) cannot be
    replaced atomically and is written in place.
    """
    path = Path(path)
    for key, value in (metadata or {}).items():
        img.SetMetaData(key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.lower().endswith(".mhd"):
        try:
            sitk.WriteImage(img, str(path), useCompression=compress)
        except RuntimeError as exc:
            raise DataError(f"{path}: cannot write ({_sitk_message(exc)})") from None
        return path
    # The temporary name ends with the final name, so SimpleITK picks the same writer
    # (.nii.gz, .seg.nrrd, ...); the leading dot hides it from folder scans.
    tmp = path.with_name(f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        sitk.WriteImage(img, str(tmp), useCompression=compress)
        os.replace(tmp, path)
    except RuntimeError as exc:
        raise DataError(f"{path}: cannot write ({_sitk_message(exc)})") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_image(
    arr: np.ndarray,
    reference: sitk.Image | Geometry,
    path: str | os.PathLike,
    compress: bool = True,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write an (x, y, z) array on the grid of ``reference``, atomically and compressed.

    See :func:`array_to_image` for the accepted shapes and :func:`save_image` for the
    atomic write. Returns ``path``.
    """
    return save_image(array_to_image(arr, reference), path, compress=compress, metadata=metadata)


def orientation_code(geometry: sitk.Image | Geometry) -> str:
    """Where the image axes point, as DICOM letters (``"LPS"``: x to the patient's left,
    y posterior, z superior; ``"ALS"`` for x and y swapped); ``""`` for 2D images.

    SimpleITK's ``DICOMOrientImageFilter`` rounds an oblique direction to the closest
    axes, so a small tilt keeps the code and only a swapped or flipped axis changes it.
    """
    geom = geometry if isinstance(geometry, Geometry) else geometry_of(geometry)
    if geom.dimension != 3:
        return ""
    return str(sitk.DICOMOrientImageFilter_GetOrientationFromDirectionCosines([float(v) for v in geom.direction]))


# -- comparing ----------------------------------------------------------------------
def _close(a: float, b: float, tol: float) -> bool:
    # Relative for values above 1 (origins in mm), absolute below (direction cosines).
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


def _fmt(values: tuple[float, ...], other: tuple[float, ...]) -> tuple[str, str]:
    for digits in (6, 10, 17):
        sa = ",".join(f"{v:.{digits}g}" for v in values)
        sb = ",".join(f"{v:.{digits}g}" for v in other)
        if sa != sb:
            break
    return sa, sb


def geometry_difference(
    a: sitk.Image | Geometry, b: sitk.Image | Geometry, tol: float = GEOMETRY_TOLERANCE
) -> str | None:
    """``None`` when ``a`` and ``b`` share a grid, else what differs, e.g.
    ``"spacing 0.625,0.625,1.25 vs 0.625,0.625,0.625"`` (``a``'s value first).

    Sizes must be equal; spacing, origin and direction may differ by ``tol`` relative
    (absolute for values below 1).
    """
    ga = a if isinstance(a, Geometry) else geometry_of(a)
    gb = b if isinstance(b, Geometry) else geometry_of(b)
    if ga.dimension != gb.dimension:
        return f"dimension {ga.dimension}D vs {gb.dimension}D"
    parts = []
    if ga.size != gb.size:
        parts.append(f"size {'x'.join(map(str, ga.size))} vs {'x'.join(map(str, gb.size))}")
    for name in ("spacing", "origin", "direction"):
        va, vb = getattr(ga, name), getattr(gb, name)
        if not all(_close(x, y, tol) for x, y in zip(va, vb)):
            sa, sb = _fmt(va, vb)
            parts.append(f"{name} {sa} vs {sb}")
    return "; ".join(parts) or None


def same_geometry(a: sitk.Image | Geometry, b: sitk.Image | Geometry, tol: float = GEOMETRY_TOLERANCE) -> bool:
    """Whether ``a`` and ``b`` have the same size, spacing, origin and direction (see
    :func:`geometry_difference` for the tolerance)."""
    return geometry_difference(a, b, tol) is None


def vector_image_to_array(img: sitk.Image) -> np.ndarray:
    """Voxel vectors as ``(C, x, y, z)`` (channel first); the same as :func:`channels_to_array`."""
    return channels_to_array(img)
