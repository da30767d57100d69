"""Reading and writing MRML nodes with MRML's own storage nodes (no ``slicer.app`` needed).

``slicer.util.loadVolume``/``saveNode`` need the application; the storage nodes used
here are what those functions use underneath, so files written here are exactly what
Slicer writes (NRRD in LPS with the full direction matrix, oblique included) and this
works both inside Slicer and with the ``slicer-core`` wheel in tests and scripts.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import numpy as np

__all__ = [
    "ensureSegmentationConverters",
    "writeVolume",
    "readVolume",
    "writeSegmentation",
    "readSegmentation",
    "ijkToRas",
    "sameGeometry",
    "temporaryNodes",
]


def ensureSegmentationConverters() -> None:
    """Register the labelmap <-> surface converter rules when nobody did (slicer-core has none).

    Inside Slicer the Segmentations module registers them at startup; registering
    twice would duplicate rules, hence the check.
    """
    import slicer

    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if factory.ConstructRepresentationObjectByRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()) is not None:
        return
    for rule in (
        slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule,
        slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule,
        slicer.vtkClosedSurfaceToFractionalLabelmapConversionRule,
        slicer.vtkFractionalLabelmapToClosedSurfaceConversionRule,
    ):
        factory.RegisterConverterRule(rule())


@contextlib.contextmanager
def temporaryNodes(scene) -> Iterator[None]:
    """Remove every node added to ``scene`` inside the block (singletons excepted) when it ends.

    ``vtkSlicerSegmentationsModuleLogic::ExportSegmentsToLabelmapNode``
    (Modules/Loadable/Segmentations/Logic/vtkSlicerSegmentationsModuleLogic.cxx) creates
    a display node for the labelmap and a colour table node for the segments; removing
    the labelmap leaves both in the scene, one pair per export. The subject hierarchy
    node is a singleton the scene keeps.
    """
    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    try:
        yield
    finally:
        added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
        for node in reversed(added):  # dependents (display, storage) were added after their owner
            if node.GetID() not in before and not node.GetSingletonTag():
                scene.RemoveNode(node)


def _temporaryStorage(scene, storageClass: str, path: Path):
    import slicer

    storage = getattr(slicer, storageClass)()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    return storage


def writeVolume(volumeNode, path: str | Path, compress: bool = True) -> Path:
    """Write a scalar or labelmap volume node to ``path`` (its geometry exactly as in the scene)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scene = volumeNode.GetScene()
    storage = _temporaryStorage(scene, "vtkMRMLVolumeArchetypeStorageNode", path)
    try:
        storage.SetUseCompression(1 if compress else 0)
        if not storage.WriteData(volumeNode):
            raise OSError(f"could not write volume '{volumeNode.GetName()}' to {path}")
    finally:
        scene.RemoveNode(storage)
    return path


def readVolume(scene, path: str | Path, name: str | None = None, labelmap: bool = False):
    """Load one volume file as a new scalar (or labelmap) volume node with display nodes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"volume file not found: {path}")
    nodeClass = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
    node = scene.AddNewNodeByClass(nodeClass, name or fileStem(path))
    storage = _temporaryStorage(scene, "vtkMRMLVolumeArchetypeStorageNode", path)
    # Exactly this file: without it a numbered name (ct_001.nrrd) loads the whole series
    # beside it, as slicer.util.loadVolume's "singleFile" property does
    # (vtkMRMLVolumeArchetypeStorageNode::SetSingleFile).
    storage.SetSingleFile(1)
    if labelmap:
        storage.SetCenterImage(0)
    ok = storage.ReadData(node)
    if not ok:
        scene.RemoveNode(storage)
        scene.RemoveNode(node)
        raise OSError(f"could not read volume file {path}")
    node.SetAndObserveStorageNodeID(storage.GetID())
    node.CreateDefaultDisplayNodes()
    return node


def writeSegmentation(segmentationNode, path: str | Path) -> Path:
    """Write a segmentation node as ``.seg.nrrd`` (segment names, colours, geometry)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scene = segmentationNode.GetScene()
    storage = _temporaryStorage(scene, "vtkMRMLSegmentationStorageNode", path)
    try:
        if not storage.WriteData(segmentationNode):
            raise OSError(f"could not write segmentation '{segmentationNode.GetName()}' to {path}")
    finally:
        scene.RemoveNode(storage)
    return path


def readSegmentation(scene, path: str | Path, name: str | None = None):
    """Load a ``.seg.nrrd`` file as a segmentation node (segment names as stored)."""
    ensureSegmentationConverters()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"segmentation file not found: {path}")
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name or fileStem(path))
    storage = _temporaryStorage(scene, "vtkMRMLSegmentationStorageNode", path)
    if not storage.ReadData(node):
        scene.RemoveNode(storage)
        scene.RemoveNode(node)
        raise OSError(f"could not read segmentation file {path}")
    node.SetAndObserveStorageNodeID(storage.GetID())
    node.CreateDefaultDisplayNodes()
    return node


def ijkToRas(volumeNode) -> np.ndarray:
    """The 4x4 IJK-to-RAS matrix of a volume node as a numpy array."""
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def sameGeometry(a, b, tolerance: float = 1e-4) -> bool:
    """Same voxel grid: dimensions and IJK-to-RAS (origin, spacing, directions) within ``tolerance``."""
    da = a.GetImageData().GetDimensions() if a.GetImageData() else None
    db = b.GetImageData().GetDimensions() if b.GetImageData() else None
    return da == db and np.allclose(ijkToRas(a), ijkToRas(b), atol=tolerance)


def fileStem(path: Path) -> str:
    """The file name without its image extension (``ct.seg.nrrd`` -> ``ct``): the node or case name."""
    name = path.name
    for suffix in (".seg.nrrd", ".nii.gz", ".nrrd", ".nii", ".mha", ".mhd", ".nhdr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem
