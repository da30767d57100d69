"""Scene -> run folder: volumes and segmentations written as the core library's dataset.

The run folder gets an MSD-style ``dataset.json`` (``labels``, ``training``,
``validation``, ``unlabeled``) next to ``imagesTr/``, ``labelsTr/`` and
``imagesUnlabeled/`` NRRD files. Every label map is exported on its volume's exact
voxel grid (origin, spacing, oblique directions; extent of the reference geometry,
so segments of any extent land where they are), with class ``i`` = the ``i``-th name
of the class list. A multi-component (vector/RGB) volume is written as one vector file,
which the core reads as that many channels; every volume of a run has the same count. A
segment named "ignore" or "unlabeled region" is not a class: its voxels get the value
after the last class, declared as ``"ignore"`` in ``labels`` (see ``ChannelInputs``). All input problems are collected and raised together as one
:class:`InputError` before anything is written, so the user fixes them in one go.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .MRMLIO import ensureSegmentationConverters, sameGeometry, temporaryNodes, writeVolume

__all__ = ["InputError", "CaseRecord", "ExportedDataset", "SceneExporter", "ROLE_ATTRIBUTE"]

#: Node attribute marking what this module created (outputs are never offered as training inputs).
ROLE_ATTRIBUTE = "SemiSupUncertainty.Role"


class InputError(ValueError):
    """The scene inputs cannot be trained on; the message lists every problem in plain words."""

    def __init__(self, problems: Sequence[str] | str, hint: str = "") -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.hint = hint
        text = "\n".join(f"- {p}" for p in self.problems) if len(self.problems) > 1 else self.problems[0]
        super().__init__(text + (f"\n{hint}" if hint else ""))


@dataclass
class CaseRecord:
    name: str
    role: str  # training, validation, unlabeled, predict
    image: str
    volumeNodeID: str = ""
    volumeName: str = ""
    label: str = ""
    segmentationNodeID: str = ""
    segmentationName: str = ""
    shape: list[int] = field(default_factory=list)  # x, y, z


@dataclass
class ExportedDataset:
    runDir: Path
    datasetPath: Path
    classNames: list[str]
    cases: list[CaseRecord]
    warnings: list[str] = field(default_factory=list)
    #: class name -> {"color": [r, g, b], "terminology": "..."} of the labeled segments, so
    #: that predicted segments look and are coded like the ones the user drew.
    classStyles: dict[str, dict] = field(default_factory=dict)
    #: label value of voxels nobody labeled (an "ignore" segment), declared in dataset.json
    ignoreLabel: int | None = None

    def names(self, role: str) -> list[str]:
        return [c.name for c in self.cases if c.role == role]

    @property
    def shapes(self) -> list[list[int]]:
        return [c.shape for c in self.cases if c.shape]


def _sanitize(name: str) -> str:
    # Dots are replaced too: the core library takes the case name from the file name.
    clean = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")
    return clean or "case"


def _segmentNames(segmentationNode) -> list[tuple[str, str]]:
    """(segment ID, stripped name) in the segmentation's order."""
    segmentation = segmentationNode.GetSegmentation()
    out = []
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        out.append((segmentation.GetNthSegmentID(i), (segment.GetName() or "").strip()))
    return out


#: Subclasses of vtkMRMLScalarVolumeNode that are not grey-level volumes: vector/RGB
#: (vtkMRMLVectorVolumeNode, vtkMRMLStreamingVolumeNode) and tensor/DTI volumes all
#: derive from vtkMRMLTensorVolumeNode; DWI and labelmaps from the scalar node directly.
NOT_SCALAR_CLASSES = ("vtkMRMLLabelMapVolumeNode", "vtkMRMLTensorVolumeNode", "vtkMRMLDiffusionWeightedVolumeNode")


def classStyles(labeledPairs: Sequence[tuple], classNames: Sequence[str]) -> dict[str, dict]:
    """Colour and terminology of each class, from the first labeled segment of that name."""
    styles: dict[str, dict] = {}
    for _, seg in labeledPairs:
        segmentation = seg.GetSegmentation()
        for segmentId, name in _segmentNames(seg):
            if name in classNames and name not in styles:
                segment = segmentation.GetSegment(segmentId)
                styles[name] = {
                    "color": [round(float(c), 6) for c in segment.GetColor()],
                    # vtkSegment::GetTerminology: the serialized terminology entry (Segmentations/Logic/vtkSlicerTerminologyEntry)
                    "terminology": segment.GetTerminology() if segment.HasTerminology() else "",
                }
    return styles


def _isScalarVolume(node) -> bool:
    return node is not None and node.IsA("vtkMRMLScalarVolumeNode") and not any(node.IsA(c) for c in NOT_SCALAR_CLASSES)


def _isVectorVolume(node) -> bool:
    """A multi-component (RGB, vector) volume; streaming (video) volumes are not inputs."""
    return node is not None and node.IsA("vtkMRMLVectorVolumeNode") and not node.IsA("vtkMRMLStreamingVolumeNode")


def _isInputVolume(node) -> bool:
    return _isScalarVolume(node) or _isVectorVolume(node)


def _components(volume) -> int:
    return int(volume.GetImageData().GetNumberOfScalarComponents())


def componentProblems(volumes: Sequence, expected: int | None = None, what: str = "the run") -> list[str]:
    """Every volume of a run needs one number of components (channels): each volume that
    differs from the first (or from ``expected``) is named."""
    volumes = [v for v in volumes if v is not None and v.GetImageData() is not None]
    if not volumes:
        return []
    first = volumes[0]
    reference = f"'{first.GetName()}' has {_components(first)}" if expected is None else f"{what} has {expected}"
    count = _components(first) if expected is None else expected
    return [
        f"volume '{v.GetName()}' has {_components(v)} component(s) per voxel but {reference}: "
        "every volume of a run needs the same number of channels"
        for v in volumes
        if _components(v) != count
    ]


class SceneExporter:
    """Turns scene nodes into a run folder the core library trains or predicts on."""

    def __init__(self, scene=None) -> None:
        if scene is None:
            import slicer

            scene = slicer.mrmlScene
        self.scene = scene

    # -- choosing inputs -------------------------------------------------------
    def _nodes(self, className: str) -> list:
        return [self.scene.GetNthNodeByClass(i, className) for i in range(self.scene.GetNumberOfNodesByClass(className))]

    def scalarVolumes(self) -> list:
        """Scalar volumes a user could train on: not labelmaps, not outputs of this module."""
        return [n for n in self._nodes("vtkMRMLScalarVolumeNode") if _isScalarVolume(n) and not n.GetAttribute(ROLE_ATTRIBUTE)]

    def inputVolumes(self) -> list:
        """Volumes a user may choose by hand: scalar and multi-component (RGB, vector) volumes,
        not labelmaps, not outputs of this module. (Only scalar ones are offered by default.)"""
        return [n for n in self._nodes("vtkMRMLScalarVolumeNode") if _isInputVolume(n) and not n.GetAttribute(ROLE_ATTRIBUTE)]

    def pairSegmentationsWithVolumes(self) -> list[tuple]:
        """(volume, segmentation) for every segmentation whose reference geometry is a scalar or
        multi-component volume."""
        pairs = []
        for seg in self._nodes("vtkMRMLSegmentationNode"):
            if seg.GetAttribute(ROLE_ATTRIBUTE):
                continue
            ref = seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole())
            if _isInputVolume(ref):
                pairs.append((ref, seg))
        return pairs

    def unpairedSegmentations(self) -> list:
        paired = {seg.GetID() for _, seg in self.pairSegmentationsWithVolumes()}
        return [s for s in self._nodes("vtkMRMLSegmentationNode") if s.GetID() not in paired and not s.GetAttribute(ROLE_ATTRIBUTE)]

    def defaultUnlabeledVolumes(self, labeledPairs: Iterable[tuple]) -> list:
        """Every other scalar volume of the scene."""
        used = {vol.GetID() for vol, _ in labeledPairs}
        return [v for v in self.scalarVolumes() if v.GetID() not in used]

    # -- checking --------------------------------------------------------------
    def classNames(self, labeledPairs: Sequence[tuple], classNames: Sequence[str] | None = None) -> list[str]:
        """The class list: same segment name = same class in every case.

        Without ``classNames``, the classes are every segment name seen, in order of
        first appearance. A case missing one of them, or (with ``classNames``) holding
        a segment of another name, is an :class:`InputError` naming case and segment.
        A segment named "ignore" or "unlabeled region" (:func:`ChannelInputs.isIgnoreSegment`)
        marks unlabeled voxels, is optional in each case and is never a class.
        """
        from .ChannelInputs import isIgnoreSegment  # ChannelInputs imports this module

        problems: list[str] = []
        perCase: list[tuple[str, list[str]]] = []
        for volume, seg in labeledPairs:
            label = f"case '{volume.GetName()}' (segmentation '{seg.GetName()}')"
            names = [name for _, name in _segmentNames(seg)]
            if not names:
                problems.append(f"{label} has no segments")
            if any(not n for n in names):
                problems.append(f"{label} has a segment without a name")
            dupes = sorted({n for n in names if n and names.count(n) > 1})
            if dupes:
                problems.append(f"{label} has several segments named {', '.join(repr(d) for d in dupes)}")
            if any(n.lower() == "background" for n in names):
                problems.append(f"{label} has a segment named 'background': that name is reserved for label 0 (everything outside the segments)")
            ignores = [n for n in names if isIgnoreSegment(n)]
            if len(ignores) > 1:
                problems.append(f"{label} has segments {ignores} that all mark unlabeled voxels; keep one ('ignore' or 'unlabeled region')")
            perCase.append((label, [n for n in names if n and not isIgnoreSegment(n)]))

        if classNames is not None:
            expected = [str(c).strip() for c in classNames if not isIgnoreSegment(str(c))]
        else:
            expected = []
            for _, names in perCase:
                expected += [n for n in names if n not in expected]
        expected = [n for n in expected if n.lower() != "background"]
        counts = {c: sum(c in names for _, names in perCase) for c in expected}
        for label, names in perCase:
            missing = [c for c in expected if c not in names]
            for c in missing:
                text = f"{label} has no segment named '{c}'"
                close = difflib.get_close_matches(c, [n for n in names if n not in expected or counts.get(n, 0) < len(perCase)], n=1, cutoff=0.6)
                if close:
                    text += f" (it has '{close[0]}': a typo?)"
                elif len(perCase) > 2 and counts[c] * 2 < len(perCase):
                    text += f" ('{c}' is in only {counts[c]} of {len(perCase)} cases)"
                problems.append(text)
            if classNames is not None:
                unknown = [n for n in names if n not in expected and n.lower() != "background"]
                for n in unknown:
                    problems.append(f"{label} has a segment '{n}' that is not one of the classes ({', '.join(expected)})")
        if problems:
            raise InputError(
                problems,
                "Every labeled case needs one segment per class, with exactly the same name in every case "
                "(an empty segment is fine where a structure is absent).",
            )
        if not expected:
            raise InputError("no classes: the labeled segmentations have no segments")
        return expected

    def checkInputs(self, labeledPairs: Sequence[tuple], unlabeledVolumes: Sequence = (), classNames: Sequence[str] | None = None) -> list[str]:
        """Everything that can be said before any file is written; returns the class list."""
        problems: list[str] = []
        if not labeledPairs:
            raise InputError(
                "no labeled case: pair at least one volume with a segmentation "
                "('Pair segmentations with volumes' pairs each segmentation with the volume it was drawn on)"
            )
        seen: dict[str, str] = {}
        for volume, seg in labeledPairs:
            if volume is None or seg is None:
                problems.append("a labeled case lacks its volume or its segmentation")
                continue
            problems += self._volumeProblems(volume)
            if not seg.IsA("vtkMRMLSegmentationNode"):
                problems.append(f"'{seg.GetName()}' is not a segmentation node")
            if volume.GetID() in seen:
                problems.append(f"volume '{volume.GetName()}' is used by two labeled cases")
            seen[volume.GetID()] = "labeled"
        for volume in unlabeledVolumes:
            problems += self._volumeProblems(volume)
            if volume.GetID() in seen:
                role = "labeled case" if seen[volume.GetID()] == "labeled" else "unlabeled volume"
                problems.append(f"volume '{volume.GetName()}' is both an unlabeled volume and a {role}: untick it in the unlabeled list")
            seen[volume.GetID()] = "unlabeled"
        if not problems:  # every volume is readable: compare their channel counts
            problems += componentProblems([v for v, _ in labeledPairs] + list(unlabeledVolumes))
        if problems:
            raise InputError(problems)
        return self.classNames(labeledPairs, classNames)

    @staticmethod
    def _volumeProblems(volume) -> list[str]:
        if not _isInputVolume(volume):
            return [f"'{volume.GetName()}' is not a scalar volume (nor a multi-component RGB/vector volume)"]
        image = volume.GetImageData()
        if image is None or image.GetNumberOfPoints() == 0:
            return [f"volume '{volume.GetName()}' has no voxels"]
        if _isScalarVolume(volume) and image.GetNumberOfScalarComponents() != 1:
            return [f"volume '{volume.GetName()}' has {image.GetNumberOfScalarComponents()} components per voxel; a single-component (grey-level) volume is needed"]
        return []

    # -- writing ---------------------------------------------------------------
    def export(
        self,
        runDir: str | Path,
        labeledPairs: Sequence[tuple],
        unlabeledVolumes: Sequence = (),
        classNames: Sequence[str] | None = None,
        validationFraction: float = 0.0,
        validationCount: int | None = None,
        datasetName: str = "SemiSupUncertainty",
    ) -> ExportedDataset:
        """Write images, label maps and ``dataset.json`` to ``runDir``; returns what was written."""
        classes = self.checkInputs(labeledPairs, unlabeledVolumes, classNames)
        runDir = Path(runDir)
        names = self._caseNames([v for v, _ in labeledPairs] + list(unlabeledVolumes))
        labeledNames = names[: len(labeledPairs)]
        validation = set(self.validationSplit(labeledNames, validationFraction, validationCount))

        cases: list[CaseRecord] = []
        counts = np.zeros(len(classes) + 1, dtype=np.int64)
        ignoreLabel = None
        for (volume, seg), name in zip(labeledPairs, labeledNames):
            image = writeVolume(volume, runDir / "imagesTr" / f"{name}.nrrd")
            label, histogram, hasIgnore = self._exportCaseLabels(seg, volume, classes, runDir / "labelsTr" / f"{name}.nrrd")
            if hasIgnore:
                ignoreLabel = len(classes) + 1  # the same value in every case (ChannelInputs.labelsWithIgnore)
            counts += histogram
            cases.append(
                CaseRecord(
                    name=name,
                    role="validation" if name in validation else "training",
                    image=image.relative_to(runDir).as_posix(),
                    label=label.relative_to(runDir).as_posix(),
                    volumeNodeID=volume.GetID(),
                    volumeName=volume.GetName(),
                    segmentationNodeID=seg.GetID(),
                    segmentationName=seg.GetName(),
                    shape=list(volume.GetImageData().GetDimensions()),
                )
            )
        for volume, name in zip(unlabeledVolumes, names[len(labeledPairs) :]):
            image = writeVolume(volume, runDir / "imagesUnlabeled" / f"{name}.nrrd")
            cases.append(
                CaseRecord(
                    name=name,
                    role="unlabeled",
                    image=image.relative_to(runDir).as_posix(),
                    volumeNodeID=volume.GetID(),
                    volumeName=volume.GetName(),
                    shape=list(volume.GetImageData().GetDimensions()),
                )
            )
        warnings = [f"class '{c}' has no voxels in any labeled case" for c, n in zip(classes, counts[1:]) if n == 0]
        if not unlabeledVolumes:
            warnings.append("no unlabeled volumes: a semi-supervised method has nothing to learn from beyond the labels")
        dataset = ExportedDataset(runDir, runDir / "dataset.json", classes, cases, warnings, classStyles(labeledPairs, classes), ignoreLabel)
        self.writeDatasetJson(dataset, datasetName)
        return dataset

    def _exportCaseLabels(self, seg, volume, classes: Sequence[str], path: Path) -> tuple[Path, np.ndarray, bool]:
        """The case's label map (with its ignore segment, if any, as ``len(classes) + 1``),
        the voxel count per class value, and whether it has an ignore segment."""
        from .ChannelInputs import exportSparseLabelmap, isIgnoreSegment

        ignores = [n for _, n in _segmentNames(seg) if isIgnoreSegment(n)]
        if not ignores:
            label, histogram = self.exportLabelmap(seg, volume, classes, path)
            return label, histogram, False
        import SimpleITK as sitk

        label, _ = exportSparseLabelmap(self.scene, seg, volume, [*classes, ignores[0]], path)
        values = sitk.GetArrayViewFromImage(sitk.ReadImage(str(label))).ravel().astype(np.int64)
        return label, np.bincount(values, minlength=len(classes) + 2)[: len(classes) + 1], True

    def exportVolumes(self, volumes: Sequence, folder: str | Path, channels: int | None = None) -> list[CaseRecord]:
        """Write volumes to predict on; the case name (file stem) is unique and file-system safe.

        ``channels``: the run's input channel count; a volume with another number of
        components is an :class:`InputError` naming it.
        """
        folder = Path(folder)
        problems = [p for v in volumes for p in self._volumeProblems(v)]
        if not problems:
            problems = componentProblems(volumes, channels, f"the trained run (channels: {channels})")
        if problems:
            raise InputError(problems)
        if not volumes:
            raise InputError("no volume selected to predict on")
        records = []
        for volume, name in zip(volumes, self._caseNames(volumes)):
            path = writeVolume(volume, folder / f"{name}.nrrd")
            records.append(
                CaseRecord(name=name, role="predict", image=str(path), volumeNodeID=volume.GetID(), volumeName=volume.GetName(), shape=list(volume.GetImageData().GetDimensions()))
            )
        return records

    def exportLabelmap(self, segmentationNode, referenceVolume, classNames: Sequence[str], path: str | Path) -> tuple[Path, np.ndarray]:
        """One label map on ``referenceVolume``'s grid, value ``i + 1`` for ``classNames[i]``.

        Returns the path and the voxel count per label value (0 = background). Where
        segments overlap, the later class wins.
        """
        import slicer
        import vtk

        ensureSegmentationConverters()
        byName = {name: sid for sid, name in _segmentNames(segmentationNode)}
        ids = vtk.vtkStringArray()
        for c in classNames:
            ids.InsertNextValue(byName[c])
        segmentationNode.CreateBinaryLabelmapRepresentation()
        with temporaryNodes(self.scene):  # the labelmap and what the export adds for it
            labelmap = self.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__semisup_export__")
            ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentationNode, ids, labelmap, referenceVolume, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY
            )
            if not ok or labelmap.GetImageData() is None:
                raise InputError(f"could not export segmentation '{segmentationNode.GetName()}' onto volume '{referenceVolume.GetName()}'")
            array = slicer.util.arrayFromVolume(labelmap)
            dtype = np.uint8 if len(classNames) < 255 else np.uint16
            slicer.util.updateVolumeFromArray(labelmap, array.astype(dtype))
            if not sameGeometry(labelmap, referenceVolume):  # never expected: ExportSegments resamples onto the reference
                raise InputError(f"segmentation '{segmentationNode.GetName()}' could not be resampled onto volume '{referenceVolume.GetName()}'")
            histogram = np.bincount(array.ravel().astype(np.int64), minlength=len(classNames) + 1)[: len(classNames) + 1]
            return writeVolume(labelmap, path), histogram

    @staticmethod
    def validationSplit(names: Sequence[str], fraction: float = 0.0, count: int | None = None) -> list[str]:
        """Validation cases chosen by a hash of their names: the same cases on every retraining.

        At least one training case is always kept.
        """
        n = len(names)
        k = int(count) if count is not None else int(np.floor(n * max(0.0, fraction) + 1e-9))
        k = max(0, min(k, n - 1))
        ranked = sorted(names, key=lambda s: hashlib.sha1(s.encode("utf-8")).hexdigest())
        chosen = set(ranked[:k])
        return [s for s in names if s in chosen]

    @staticmethod
    def _caseNames(volumes: Sequence) -> list[str]:
        used: set[str] = set()
        out = []
        for volume in volumes:
            base = _sanitize(volume.GetName())
            name, i = base, 2
            while name.lower() in used:  # case-insensitive file systems
                name, i = f"{base}_{i}", i + 1
            used.add(name.lower())
            out.append(name)
        return out

    @staticmethod
    def writeDatasetJson(dataset: ExportedDataset, datasetName: str = "SemiSupUncertainty") -> Path:
        def entries(role: str, withLabel: bool) -> list[dict[str, str]]:
            return [{"image": c.image, "label": c.label} if withLabel else {"image": c.image} for c in dataset.cases if c.role == role]

        description = {
            "name": datasetName,
            "description": "Exported from a 3D Slicer scene by the SemiSupUncertainty extension",
            "tensorImageSize": "3D",
            "labels": {"0": "background", **{str(i + 1): c for i, c in enumerate(dataset.classNames)}},
            "numTraining": len(dataset.names("training")),
            "training": entries("training", True),
            "unlabeled": entries("unlabeled", False),
        }
        if dataset.ignoreLabel is not None:  # nnU-Net v2: voxels of this value are left out of losses and metrics
            description["labels"]["ignore"] = int(dataset.ignoreLabel)
        if dataset.names("validation"):
            description["validation"] = entries("validation", True)
        dataset.runDir.mkdir(parents=True, exist_ok=True)
        dataset.datasetPath.write_text(json.dumps(description, indent=2))
        manifest = {
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "classes": dataset.classNames,
            "classStyles": dataset.classStyles,
            "ignoreLabel": dataset.ignoreLabel,
            "warnings": dataset.warnings,
            "cases": [asdict(c) for c in dataset.cases],
        }
        (dataset.runDir / "slicer-cases.json").write_text(json.dumps(manifest, indent=2))
        return dataset.datasetPath
