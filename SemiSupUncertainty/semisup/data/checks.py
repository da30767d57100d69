"""Input checks run before training and prediction.

Every problem found is reported at once (one :class:`DataError` listing each file and
what is wrong with it), so a user fixes the whole dataset in one go instead of
meeting the problems one training start at a time. Headers are checked first, so a
volume too large for memory is reported without reading its voxels.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .dataset import Case, DatasetSpec
from .errors import DataError
from .io import (
    Geometry,
    channels_to_array,
    geometry_difference,
    geometry_of,
    image_to_array,
    read_channels,
    read_channels_geometry,
    read_geometry,
    read_image,
)
from .preprocess import preprocessed_geometry

__all__ = ["check_case", "check_dataset", "check_geometry", "check_image", "count_channels", "DEFAULT_MEMORY_LIMIT_GIB"]

#: Largest volume accepted, as float32 after resampling (the network input).
DEFAULT_MEMORY_LIMIT_GIB = 2.0
_GIB = 1024**3
#: The warning for a label map without foreground (also how check_dataset counts them).
NO_FOREGROUND = "label has no foreground (all voxels are 0)"


def _display(path: Path | str, root: Path | None) -> str:
    """A path relative to the dataset folder when it lies inside it."""
    p = Path(path)
    if root is not None:
        try:
            return p.relative_to(root).as_posix()
        except ValueError:
            pass
    return str(p)


def _size_str(size: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in size)


def _dimension_problems(geom: Geometry, name: str, spatial_dims: int) -> list[str]:
    if geom.dimension == 2 and spatial_dims == 3:
        return [
            f"{name}: is a 2D image (size {_size_str(geom.size)}) but data.spatial_dims is 3; "
            "use data.spatial_dims: 2 or 3D volumes"
        ]
    if geom.dimension == 3 and spatial_dims == 3 and geom.size[2] == 1:
        return [
            f"{name}: has a single slice (size {_size_str(geom.size)}) but data.spatial_dims is 3; "
            "use data.spatial_dims: 2"
        ]
    return []


def _memory_problems(
    geom: Geometry, name: str, memory_limit_gib: float, target_spacing: Sequence[float] | None, channels: int = 1
) -> list[str]:
    """The volume (all ``channels``) as float32 on the preprocessed grid must fit ``memory_limit_gib``."""
    try:
        grid = preprocessed_geometry(geom, target_spacing)
    except DataError as exc:
        return [f"{name}: {exc}"]
    nbytes = 4 * channels * math.prod(grid.size)
    limit = memory_limit_gib * _GIB
    if nbytes <= limit:
        return []
    factor = (nbytes / limit) ** (1.0 / grid.dimension) * 1.05
    suggestion = [math.ceil(s * factor * 100) / 100 for s in grid.spacing]
    where = "at data.target_spacing" if target_spacing is not None else "at its native spacing"
    return [
        f"{name}: is {nbytes / _GIB:.1f} GiB as float32 ({_size_str(grid.size)} voxels {where} "
        f"{','.join(f'{s:g}' for s in grid.spacing)} mm), above the {memory_limit_gib:g} GiB limit; "
        f"set data.target_spacing coarser, e.g. {suggestion}"
    ]


def _image_value_problems(arr: np.ndarray, name: str) -> list[str]:
    if arr.dtype.kind != "f":
        return []
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:
        return [f"{name}: {bad} voxel(s) are NaN or infinite; replace them before training"]
    return []


def _label_findings(
    arr: np.ndarray, name: str, num_classes: int, ignore_label: int | None = None
) -> tuple[list[str], list[str]]:
    """(problems, warnings) of a label array's values; ``ignore_label`` voxels are allowed."""
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr)
        if not finite.all():
            return [f"{name}: label has {int(arr.size - np.count_nonzero(finite))} NaN or infinite voxel(s)"], []
        fractional = arr != np.rint(arr)
        if fractional.any():
            examples = ", ".join(f"{v:g}" for v in np.unique(arr[fractional])[:5])
            return [f"{name}: label values must be integers; found non-integer values ({examples})"], []
    elif arr.dtype.kind not in "iub":
        return [f"{name}: label pixel type {arr.dtype} is not an integer type"], []
    if arr.size == 0:
        return [f"{name}: label is empty"], []
    bad = (arr < 0) | (arr > num_classes - 1)
    if ignore_label is not None:
        bad &= arr != ignore_label
    problems = []
    if bad.any():
        outside = np.unique(arr[bad])
        shown = ", ".join(f"{v:g}" for v in outside[:10]) + (", ..." if outside.size > 10 else "")
        allowed = f"0..{num_classes - 1}" + (f" and {ignore_label} (ignore)" if ignore_label is not None else "")
        problems.append(f"{name}: label values {shown} outside {allowed} (the dataset has {num_classes} classes)")
    labeled = arr if ignore_label is None else arr[arr != ignore_label]
    warnings = []
    if labeled.size == 0:
        warnings.append(f"{name}: every voxel is {ignore_label} (ignore): the case teaches nothing")
    elif labeled.max() <= 0:
        warnings.append(f"{name}: {NO_FOREGROUND}")
    return problems, warnings


def _case_findings(
    case: Case,
    num_classes: int,
    spatial_dims: int,
    memory_limit_gib: float,
    target_spacing: Sequence[float] | None,
    root: Path | None,
    ignore_label: int | None = None,
) -> tuple[list[str], list[str]]:
    img_name = _display(case.image, root)
    lab_name = _display(case.label, root) if case.label is not None else ""

    def reword(exc: DataError, path: Path, name: str) -> str:
        return str(exc).replace(str(path), name, 1)

    problems: list[str] = []
    warnings: list[str] = []
    channels = 1
    try:
        image_geom, channels = read_channels_geometry(case.files)
    except DataError as exc:
        problems.append(reword(exc, case.image, img_name))
        image_geom = None
    label_geom = None
    if case.label is not None:
        try:
            label_geom = read_geometry(case.label)
        except DataError as exc:
            problems.append(reword(exc, case.label, lab_name))
    if image_geom is not None:
        problems += _dimension_problems(image_geom, img_name, spatial_dims)
        too_large = _memory_problems(image_geom, img_name, memory_limit_gib, target_spacing, channels)
        problems += too_large
        if label_geom is not None:
            diff = geometry_difference(label_geom, image_geom)
            if diff:
                problems.append(f"{lab_name}: geometry differs from its image {img_name} ({diff})")
        if not too_large:  # never read the voxels of a volume too large for memory
            problems += _image_value_problems(channels_to_array(read_channels(case.files)), img_name)
    if label_geom is not None and not _memory_problems(label_geom, lab_name, memory_limit_gib, target_spacing):
        p, w = _label_findings(image_to_array(read_image(case.label)), lab_name, num_classes, ignore_label)
        problems += p
        warnings += w
    return problems, warnings


def _raise(problems: list[str], where: str) -> None:
    if len(problems) == 1:
        raise DataError(problems[0])
    raise DataError(f"{where}: {len(problems)} problems:\n  - " + "\n  - ".join(problems))


def check_case(
    case: Case,
    num_classes: int,
    spatial_dims: int,
    *,
    memory_limit_gib: float = DEFAULT_MEMORY_LIMIT_GIB,
    target_spacing: Sequence[float] | None = None,
    root: Path | None = None,
) -> list[str]:
    """Check one case's image and label; return warnings, raise on problems.

    Problems: unreadable or unsupported file; 2D image for 3D training; volume above
    ``memory_limit_gib`` as float32 after resampling to ``target_spacing``; NaN/inf
    in the image; label geometry different from its image; non-integer label values;
    label values outside ``0..num_classes-1``. Warning: a label without foreground.

    Raises
    ------
    DataError
        Naming each file and its problem (one line per problem).
    """
    problems, warnings = _case_findings(case, num_classes, spatial_dims, memory_limit_gib, target_spacing, root)
    if problems:
        _raise(problems, case.name)
    return warnings


def check_dataset(
    spec: DatasetSpec,
    spatial_dims: int,
    *,
    memory_limit_gib: float = DEFAULT_MEMORY_LIMIT_GIB,
    target_spacing: Sequence[float] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> list[str]:
    """Check every case of ``spec`` (training, validation, unlabeled, test) and report
    all problems in one :class:`DataError`; return the warnings.

    Parameters
    ----------
    progress:
        Called as ``progress(done, total, case_name)`` after each case (for a GUI).
    """
    cases = spec.all_cases
    problems: list[str] = []
    warnings: list[str] = []
    empty: set[str] = set()
    for i, case in enumerate(cases, start=1):
        p, w = _case_findings(
            case, spec.num_classes, spatial_dims, memory_limit_gib, target_spacing, spec.root, spec.ignore_label
        )
        problems += p
        warnings += w
        if case.label is not None and any(x.endswith(NO_FOREGROUND) for x in w):
            empty.add(case.name)
        if progress is not None:
            progress(i, len(cases), case.name)
    for split, why in (
        ("training", "there is nothing to learn"),
        ("validation", "validation would score Dice 1.0 for a model that finds nothing"),
    ):
        listed = getattr(spec, split)
        if listed and all(c.name in empty for c in listed):
            problems.append(f"{spec.source}: every {split} label is all background (0): {why}; check the label files")
    if problems:
        _raise(problems, spec.source)
    return warnings


def check_geometry(
    geom: Geometry,
    path: str | os.PathLike,
    spatial_dims: int,
    *,
    memory_limit_gib: float = DEFAULT_MEMORY_LIMIT_GIB,
    target_spacing: Sequence[float] | None = None,
    channels: int = 1,
) -> None:
    """Check an image's header (from :func:`read_geometry`) before its voxels are read:
    dimension and memory (all ``channels``), so an 830^3 volume is refused without loading 1.5 GB."""
    name = str(path)
    problems = _dimension_problems(geom, name, spatial_dims) + _memory_problems(
        geom, name, memory_limit_gib, target_spacing, channels
    )
    if problems:
        _raise(problems, name)


def check_image(
    image: sitk.Image,
    path: str | os.PathLike,
    spatial_dims: int,
    *,
    memory_limit_gib: float = DEFAULT_MEMORY_LIMIT_GIB,
    target_spacing: Sequence[float] | None = None,
) -> list[str]:
    """Check an image already read (for prediction): dimension, memory, NaN/inf.

    ``path`` is only used to name the image in the message. Returns warnings (none yet).
    """
    name = str(path)
    geom = geometry_of(image)
    too_large = _memory_problems(geom, name, memory_limit_gib, target_spacing, image.GetNumberOfComponentsPerPixel())
    problems = _dimension_problems(geom, name, spatial_dims) + too_large
    if not too_large:
        problems += _image_value_problems(channels_to_array(image), name)
    if problems:
        _raise(problems, name)
    return []


def count_channels(spec: DatasetSpec) -> int:
    """The number of input channels every case of ``spec`` has (from the file headers).

    Raises
    ------
    DataError
        Cases disagree (naming a case of each count), or dataset.json names a
        different number of channels (``modality`` / ``channel_names``).
    """
    counts: dict[int, str] = {}
    for case in spec.all_cases:
        counts.setdefault(read_channels_geometry(case.files)[1], _display(case.image, spec.root))
    if len(counts) > 1:
        listed = "; ".join(f"{c} channel(s): {name}" for c, name in sorted(counts.items()))
        raise DataError(f"{spec.source}: cases have different numbers of channels ({listed})")
    channels = next(iter(counts))
    if spec.channel_names and len(spec.channel_names) != channels:
        raise DataError(
            f"{spec.source}: 'modality'/'channel_names' lists {len(spec.channel_names)} channel(s) "
            f"{spec.channel_names} but the images have {channels} ({counts[channels]})"
        )
    return channels
