"""Several channels per case and sparse labels, from scene nodes to the core's files.

- **Channel volumes**: several scalar volumes of one case (T2 + ADC, CT + PET, ...) must
  share one voxel grid; :func:`checkChannelVolumes` says which node differs and how.
  They are written as nnU-Net per-channel files ``<case>_0000.nrrd``, ``<case>_0001.nrrd``
  (:func:`exportChannelVolumes`), which the core groups into one case.
- **Multi-component volumes** (``vtkMRMLVectorVolumeNode``: RGB photographs, vector
  NRRD) are written as they are (one file with ``C`` components per voxel), which the core
  reads as ``C`` channels (:func:`exportVectorVolume`).
- **Sparse labels**: a segment named "ignore" or "unlabeled region" (any case) marks the
  voxels nobody labeled. :func:`exportSparseLabelmap` writes it as the value after the
  last class, which :func:`labelsWithIgnore` declares as ``"ignore"`` in dataset.json
  (nnU-Net v2), so training leaves those voxels out.

Problems raise :class:`SceneExporter.InputError` naming the node and what is wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .MRMLIO import ijkToRas, writeVolume
from .SceneExporter import InputError, SceneExporter, _sanitize

__all__ = [
    "IGNORE_SEGMENT_NAMES",
    "isIgnoreSegment",
    "splitIgnoreClass",
    "labelsWithIgnore",
    "checkChannelVolumes",
    "exportChannelVolumes",
    "vectorComponents",
    "exportVectorVolume",
    "exportSparseLabelmap",
]

#: Segment names (compared without case and surrounding spaces) that mark unlabeled voxels.
IGNORE_SEGMENT_NAMES = ("ignore", "unlabeled region")
#: Same tolerance as ``MRMLIO.sameGeometry`` (mm and direction cosines).
GEOMETRY_TOLERANCE = 1e-4


def isIgnoreSegment(name: str) -> bool:
    return (name or "").strip().lower() in IGNORE_SEGMENT_NAMES


def splitIgnoreClass(classNames: Sequence[str]) -> tuple[list[str], str | None]:
    """The classes without the ignore segment, and the ignore segment's name (or ``None``).

    Raises
    ------
    InputError
        Two segments are named as ignore regions ("ignore" and "unlabeled region").
    """
    ignores = [c for c in classNames if isIgnoreSegment(c)]
    if len(ignores) > 1:
        raise InputError(f"segments {ignores} all mark unlabeled voxels; keep one ('ignore' or 'unlabeled region')")
    return [c for c in classNames if not isIgnoreSegment(c)], (ignores[0] if ignores else None)


def labelsWithIgnore(classNames: Sequence[str]) -> dict[str, object]:
    """dataset.json ``labels``: background, the classes, and ``"ignore"`` after the last class
    when one of ``classNames`` is an ignore segment."""
    classes, ignore = splitIgnoreClass(classNames)
    labels: dict[str, object] = {"0": "background", **{str(i + 1): c for i, c in enumerate(classes)}}
    if ignore is not None:
        labels["ignore"] = len(classes) + 1
    return labels


def _dimensions(node) -> tuple[int, ...] | None:
    image = node.GetImageData()
    return tuple(image.GetDimensions()) if image is not None else None


def _geometryDifference(node, reference) -> str | None:
    if _dimensions(node) != _dimensions(reference):
        return f"dimensions {_dimensions(node)} vs {_dimensions(reference)}"
    a, b = ijkToRas(node), ijkToRas(reference)
    parts = []
    spacing_a, spacing_b = np.linalg.norm(a[:3, :3], axis=0), np.linalg.norm(b[:3, :3], axis=0)
    if not np.allclose(spacing_a, spacing_b, atol=GEOMETRY_TOLERANCE):
        parts.append(f"spacing {np.round(spacing_a, 6).tolist()} vs {np.round(spacing_b, 6).tolist()}")
    if not np.allclose(a[:3, 3], b[:3, 3], atol=GEOMETRY_TOLERANCE):
        parts.append(f"origin {np.round(a[:3, 3], 4).tolist()} vs {np.round(b[:3, 3], 4).tolist()}")
    if not np.allclose(a[:3, :3] / spacing_a, b[:3, :3] / spacing_b, atol=GEOMETRY_TOLERANCE):
        parts.append("directions differ")
    return "; ".join(parts) or None


def checkChannelVolumes(volumes: Sequence) -> None:
    """Raise :class:`InputError` unless every volume (one per channel) has the first one's grid.

    The message names each differing volume and what differs (dimensions, spacing,
    origin, directions): resample it onto the first (Resample Scalar/Vector/DWI Volume).
    """
    if not volumes:
        raise InputError("no channel volume selected")
    problems = []
    for node in volumes:
        if node.GetImageData() is None:
            problems.append(f"volume '{node.GetName()}' has no image data")
    first = volumes[0]
    for node in volumes[1:]:
        if node.GetImageData() is None or first.GetImageData() is None:
            continue
        diff = _geometryDifference(node, first)
        if diff:
            problems.append(f"volume '{node.GetName()}' is not on the grid of '{first.GetName()}' ({diff})")
    if problems:
        raise InputError(problems, hint="every channel of a case needs the same voxel grid: resample it onto the first")


def exportChannelVolumes(volumes: Sequence, folder: str | Path, caseName: str) -> list[Path]:
    """Write the channels of one case as ``<case>_0000.nrrd``, ``<case>_0001.nrrd``, ...
    (after :func:`checkChannelVolumes`)."""
    checkChannelVolumes(volumes)
    name = _sanitize(caseName)
    return [writeVolume(node, Path(folder) / f"{name}_{c:04d}.nrrd") for c, node in enumerate(volumes)]


def vectorComponents(node) -> int:
    """Components per voxel of a volume node (3 for an RGB photograph, 1 for a scalar volume)."""
    image = node.GetImageData()
    if image is None:
        raise InputError(f"volume '{node.GetName()}' has no image data")
    return int(image.GetNumberOfScalarComponents())


def exportVectorVolume(node, path: str | Path) -> tuple[Path, int]:
    """Write a multi-component volume (``vtkMRMLVectorVolumeNode``) as one vector NRRD;
    returns the path and the channel count."""
    if not node.IsA("vtkMRMLVectorVolumeNode"):
        raise InputError(f"volume '{node.GetName()}' is a {node.GetClassName()}, not a multi-component volume")
    return writeVolume(node, path), vectorComponents(node)


def exportSparseLabelmap(scene, segmentationNode, referenceVolume, classNames: Sequence[str], path: str | Path) -> tuple[Path, dict[str, object]]:
    """Label map with the ignore segment as the value after the last class.

    Classes get ``1..C`` in ``classNames`` order (the ignore segment left out); the ignore
    segment ``C + 1`` where no class is painted (a painted class wins over the ignore
    region). Returns the path and the dataset.json ``labels``.
    """
    import SimpleITK as sitk

    classes, ignore = splitIgnoreClass(classNames)
    exporter = SceneExporter(scene)
    path = Path(path)
    written, _ = exporter.exportLabelmap(segmentationNode, referenceVolume, classes, path)
    if ignore is None:
        return written, labelsWithIgnore(classes)
    ignorePath = path.with_name(f".ignore-{path.name}")
    try:
        exporter.exportLabelmap(segmentationNode, referenceVolume, [ignore], ignorePath)
        labels = sitk.ReadImage(str(written))
        arr = sitk.GetArrayFromImage(labels)
        unlabeled = (sitk.GetArrayFromImage(sitk.ReadImage(str(ignorePath))) > 0) & (arr == 0)
        arr[unlabeled] = len(classes) + 1
        out = sitk.GetImageFromArray(arr)
        out.CopyInformation(labels)
        sitk.WriteImage(out, str(written), useCompression=True)
    finally:
        ignorePath.unlink(missing_ok=True)
    return written, labelsWithIgnore(classNames)
