"""Result files -> scene: segmentation, uncertainty volume and ranking table nodes.

The worker writes its outputs on the input's exact grid; they are read with MRML's
own storage nodes, so the loaded nodes have the input's geometry. Segments are named
after the classes (label ``i + 1`` = ``classNames[i]``), one segment per class even
where a class was not predicted, with distinct colours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .MRMLIO import ensureSegmentationConverters, readVolume, temporaryNodes
from .SceneExporter import ROLE_ATTRIBUTE

__all__ = ["SceneImporter", "ScoreRow", "CLASS_COLORS", "PRIMARY_SCORES"]

#: Distinct segment colours (a colour-blind-friendly qualitative palette), cycled.
CLASS_COLORS = [
    (0.90, 0.62, 0.00),
    (0.34, 0.71, 0.91),
    (0.00, 0.62, 0.45),
    (0.94, 0.89, 0.26),
    (0.00, 0.45, 0.70),
    (0.84, 0.37, 0.00),
    (0.80, 0.47, 0.65),
    (0.55, 0.86, 0.35),
    (0.60, 0.40, 0.20),
    (0.65, 0.65, 0.65),
]

#: Score used to rank volumes (most uncertain first), first one present wins. The core
#: library ranks by the mean entropy inside the predicted foreground.
PRIMARY_SCORES = ("mean_uncertainty_foreground", "uncertainty", "mean_uncertainty_image")

#: Colour maps for the uncertainty overlay, first one present in the scene wins.
UNCERTAINTY_COLOR_NODES = (
    "vtkMRMLColorTableNodeFileInferno.txt",
    "vtkMRMLColorTableNodeFileViridis.txt",
    "vtkMRMLPETProceduralColorNodePET-Heat",
    "vtkMRMLColorTableNodeRainbow",
)


@dataclass
class ScoreRow:
    volumeName: str
    scores: dict[str, float]
    volumeNodeID: str = ""


def primaryScore(scores: dict[str, float]) -> tuple[str, float]:
    for key in PRIMARY_SCORES:
        if key in scores:
            return key, scores[key]
    for key, value in scores.items():
        return key, value
    return "", float("nan")


class SceneImporter:
    def __init__(self, scene=None) -> None:
        if scene is None:
            import slicer

            scene = slicer.mrmlScene
        self.scene = scene

    # -- segmentation ----------------------------------------------------------
    def segmentationFromLabelmapFile(self, labelPath: str | Path, classNames: Sequence[str], referenceVolume, name: str, classStyles: dict[str, dict] | None = None):
        """A segmentation node with one named, coloured segment per class from a label map file.

        ``classStyles`` (class name -> ``{"color", "terminology"}``, from the training
        segments) gives each segment the colour and terminology the user drew it with;
        classes without a style get a distinct colour of :data:`CLASS_COLORS`.
        """
        import slicer

        ensureSegmentationConverters()
        seg = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", self.scene.GenerateUniqueName(name))
        seg.CreateDefaultDisplayNodes()
        if referenceVolume is not None:
            seg.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolume)
        try:
            with temporaryNodes(self.scene):  # the label map and its display and storage nodes
                labelmap = readVolume(self.scene, labelPath, name="__semisup_import__", labelmap=True)
                if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, seg):
                    raise OSError(f"could not import the label map {labelPath} into a segmentation")
        except Exception:
            self.scene.RemoveNode(seg)
            raise
        segmentation = seg.GetSegmentation()
        byLabel = {}
        for i in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetNthSegment(i)
            byLabel[segment.GetLabelValue()] = segmentation.GetNthSegmentID(i)
        for value in sorted(byLabel):
            segment = segmentation.GetSegment(byLabel[value])
            if 1 <= value <= len(classNames):
                segment.SetName(classNames[value - 1])
            else:  # the model knows more classes than the run's dataset.json names
                segment.SetName(f"Label {value}")
            segment.SetColor(*CLASS_COLORS[(value - 1) % len(CLASS_COLORS)])
        # Classes not predicted at all still get their (empty) segment, in class order.
        for index, className in enumerate(classNames, start=1):
            if index not in byLabel:
                segmentId = segmentation.AddEmptySegment("", className, list(CLASS_COLORS[(index - 1) % len(CLASS_COLORS)]))
                byLabel[index] = segmentId
            segmentation.SetSegmentIndex(byLabel[index], index - 1)
            style = (classStyles or {}).get(className) or {}
            segment = segmentation.GetSegment(byLabel[index])
            if len(style.get("color") or []) == 3:
                segment.SetColor(*[float(c) for c in style["color"]])
            if style.get("terminology"):
                segment.SetTerminology(str(style["terminology"]))
        return seg

    # -- uncertainty -----------------------------------------------------------
    def uncertaintyVolumeFromFile(self, path: str | Path, name: str):
        """A scalar volume with a colour map and a window starting at 0, low values transparent in overlays."""
        node = readVolume(self.scene, path, name=self.scene.GenerateUniqueName(name))
        node.SetAttribute(ROLE_ATTRIBUTE, "uncertainty")
        display = node.GetDisplayNode()
        colorId = next((cid for cid in UNCERTAINTY_COLOR_NODES if self.scene.GetNodeByID(cid) is not None), None)
        if display is not None:
            if colorId:
                display.SetAndObserveColorNodeID(colorId)
            import slicer

            values = slicer.util.arrayFromVolume(node)
            top = float(np.nanmax(values)) if values.size else 0.0
            top = top if math.isfinite(top) and top > 0 else 1.0
            display.AutoWindowLevelOff()
            display.SetWindowLevelMinMax(0.0, top)
            # Voxels the model is sure about stay transparent when overlaid on the input.
            display.SetLowerThreshold(0.05 * top)
            display.SetUpperThreshold(top * 2.0)
            display.ApplyThresholdOn()
        return node

    # -- table -----------------------------------------------------------------
    def scoreTable(self, rows: Sequence[ScoreRow], name: str = "Uncertainty ranking"):
        """A table node ranking the volumes most uncertain first (the next ones to label)."""
        import vtk

        keyName = next((primaryScore(r.scores)[0] for r in rows if r.scores), "")
        ranked = sorted(rows, key=lambda r: r.scores.get(keyName, float("-inf")), reverse=True)
        otherKeys: list[str] = []
        for r in ranked:
            otherKeys += [k for k in r.scores if k != keyName and k not in otherKeys]

        table = self.scene.AddNewNodeByClass("vtkMRMLTableNode", self.scene.GenerateUniqueName(name))
        table.SetAttribute(ROLE_ATTRIBUTE, "ranking")
        vt = table.GetTable()
        rank = vtk.vtkIntArray()
        rank.SetName("Rank")
        volume = vtk.vtkStringArray()
        volume.SetName("Volume")
        score = vtk.vtkDoubleArray()
        score.SetName("Uncertainty score")
        others = []
        for key in otherKeys:
            arr = vtk.vtkDoubleArray()
            arr.SetName(key)
            others.append(arr)
        note = vtk.vtkStringArray()
        note.SetName("Note")
        nodeId = vtk.vtkStringArray()
        nodeId.SetName("Volume node ID")
        for i, row in enumerate(ranked, start=1):
            rank.InsertNextValue(i)
            volume.InsertNextValue(row.volumeName)
            score.InsertNextValue(row.scores.get(keyName, float("nan")))
            for key, arr in zip(otherKeys, others):
                arr.InsertNextValue(row.scores.get(key, float("nan")))
            empty = row.scores.get("foreground_voxels") == 0
            # size_flagged: a class far smaller or larger than any labeled one (semisup/data/label_sizes.py)
            odd = row.scores.get("size_flagged") == 1
            note.InsertNextValue("nothing segmented: check this volume" if empty
                                 else "size unlike the labeled cases: check this volume" if odd else "")
            nodeId.InsertNextValue(row.volumeNodeID)
        for arr in [rank, volume, score, *others, note, nodeId]:
            vt.AddColumn(arr)
        table.SetColumnDescription("Uncertainty score", f"{keyName}: higher means the model is less sure; label the top rows next")
        table.SetUseColumnTitleAsColumnHeader(True) if hasattr(table, "SetUseColumnTitleAsColumnHeader") else None
        table.Modified()
        return table

    # -- placing ---------------------------------------------------------------
    def placeBeside(self, node, inputVolume) -> None:
        """Put ``node`` in the input's subject-hierarchy folder/study (when the hierarchy tracks it)."""
        sh = self.scene.GetSubjectHierarchyNode()
        if sh is None or inputVolume is None:
            return
        inputItem = sh.GetItemByDataNode(inputVolume)
        item = sh.GetItemByDataNode(node)
        if inputItem and item:
            sh.SetItemParent(item, sh.GetItemParent(inputItem))

    def showOverlay(self, inputVolume, uncertaintyVolume=None, segmentation=None, opacity: float = 0.5) -> None:
        """Input as background and uncertainty as foreground in every slice view; segmentation outlines on top."""
        for i in range(self.scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
            composite = self.scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
            composite.SetBackgroundVolumeID(inputVolume.GetID())
            if uncertaintyVolume is not None:
                composite.SetForegroundVolumeID(uncertaintyVolume.GetID())
                composite.SetForegroundOpacity(opacity)
        if segmentation is not None and segmentation.GetDisplayNode() is not None:
            segmentation.GetDisplayNode().SetVisibility(True)
            segmentation.GetDisplayNode().SetOpacity2DFill(0.2)
