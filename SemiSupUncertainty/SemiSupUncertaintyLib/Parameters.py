"""Settings of a training/prediction and the parameter node that saves the GUI state with the scene.

:class:`TrainingSettings` is what the console API and the widget share; its
:meth:`~TrainingSettings.configOverrides` are the dotted keys of the core library's
``RunConfig`` (``semisup/config.py``). :class:`ParameterNode` stores those settings and
the selected nodes in a ``vtkMRMLScriptedModuleNode`` (a scene node, so it is saved
and restored with the scene), typed by the dataclass fields.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Sequence

__all__ = ["TrainingSettings", "PredictionSettings", "GuiState", "ParameterNode", "autoPatchSize"]


def autoPatchSize(shapes: Sequence[Sequence[int]], spatialDims: int = 3, maximum: Sequence[int] = (112, 112, 80), multiple: int = 16) -> list[int]:
    """Largest patch (x, y, z) that fits every volume, a multiple of ``multiple`` (V-Net downsamples 4 times), capped."""
    dims = spatialDims
    out = []
    for axis in range(dims):
        smallest = min((int(s[axis]) for s in shapes if len(s) > axis), default=maximum[axis])
        size = min(smallest, int(maximum[axis]))
        out.append(max(multiple, (size // multiple) * multiple))
    return out


@dataclass
class TrainingSettings:
    """What the user chooses for a training run (defaults: the UA-MT paper's, fewer iterations)."""

    method: str = "uamt"
    network: str = "vnet"
    iterations: int = 2000
    patchSize: list[int] | None = None  # None: largest multiple of 16 that fits every volume
    spatialDims: int = 3
    labeledBatch: int = 2
    unlabeledBatch: int = 2
    baseFilters: int = 16
    modality: str = "MR"
    device: str = "auto"
    validationFraction: float = 0.2
    valEvery: int = 200
    checkpointEvery: int = 100
    learningRate: float | None = None  # None: the method's default

    def validationError(self) -> str:
        """Empty when the settings can be used, else the reason in plain words."""
        if self.iterations < 1:
            return "iterations must be at least 1"
        if self.labeledBatch < 1:
            return "the labeled batch size must be at least 1"
        if self.unlabeledBatch < 0:
            return "the unlabeled batch size cannot be negative"
        if self.spatialDims not in (2, 3):
            return "spatial dimensions must be 2 or 3"
        if self.patchSize is not None and (len(self.patchSize) != self.spatialDims or min(self.patchSize) < 1):
            return f"the patch size needs {self.spatialDims} positive numbers (x, y{', z' if self.spatialDims == 3 else ''})"
        if not 0.0 <= self.validationFraction < 1.0:
            return "the validation fraction must be between 0 and 1"
        if self.modality.upper() not in ("MR", "CT"):
            return "the modality must be MR or CT"
        return ""

    @classmethod
    def fromConfig(cls, config: dict[str, Any]) -> "TrainingSettings":
        """The settings a run configuration (``RunConfig.to_dict()``, e.g. a ``semisup plan``
        YAML) sets; what it lacks keeps the default. The validation fraction is not a
        config key (the export decides it) and stays the default."""
        data, network, train = (config.get(k) or {} for k in ("data", "network", "train"))
        method = config.get("method") or {}
        defaults = cls()
        patch = data.get("patch_size")
        lr = train.get("lr")
        return cls(
            method=str(method.get("name", defaults.method)),
            network=str(network.get("name", defaults.network)),
            iterations=int(train.get("iterations", defaults.iterations)),
            patchSize=[int(v) for v in patch] if patch else None,
            spatialDims=int(data.get("spatial_dims", defaults.spatialDims)),
            labeledBatch=int(train.get("labeled_batch", defaults.labeledBatch)),
            unlabeledBatch=int(train.get("unlabeled_batch", defaults.unlabeledBatch)),
            baseFilters=int(network.get("base_filters", defaults.baseFilters)),
            modality=str(data.get("modality", defaults.modality)).upper(),
            device=str(train.get("device", defaults.device)),
            valEvery=int(train.get("val_every", defaults.valEvery)),
            checkpointEvery=int(train.get("checkpoint_every", defaults.checkpointEvery)),
            learningRate=float(lr) if lr else None,
        )

    def configOverrides(self, shapes: Sequence[Sequence[int]] = ()) -> dict[str, Any]:
        """Dotted ``RunConfig`` keys for these settings; ``shapes`` (x, y, z) size the automatic patch."""
        patch = list(self.patchSize) if self.patchSize else autoPatchSize(shapes, self.spatialDims)
        out: dict[str, Any] = {
            "method.name": self.method,
            "network.name": self.network,
            "network.base_filters": int(self.baseFilters),
            "data.spatial_dims": int(self.spatialDims),
            "data.patch_size": patch,
            "data.modality": self.modality.upper(),
            "train.iterations": int(self.iterations),
            "train.labeled_batch": int(self.labeledBatch),
            "train.unlabeled_batch": int(self.unlabeledBatch),
            "train.device": self.device,
            "train.val_every": int(self.valEvery),
            "train.checkpoint_every": int(self.checkpointEvery),
        }
        if self.learningRate:
            out["train.lr"] = float(self.learningRate)
        return out


@dataclass
class PredictionSettings:
    mcSamples: int = 8  # T stochastic passes (UA-MT: T = 8)
    device: str = "auto"


@dataclass
class GuiState:
    """Everything of the GUI that is not a node selection."""

    training: TrainingSettings = field(default_factory=TrainingSettings)
    prediction: PredictionSettings = field(default_factory=PredictionSettings)
    runsDirectory: str = ""
    runName: str = ""
    currentRunDir: str = ""  # the run trained last (resume, predict)
    predictRunDir: str = ""
    planPath: str = ""  # the plan.yaml of the last "Plan from data": the base of the next training's config


#: Node reference roles (one reference per selected node, in order).
ROLE_LABELED_VOLUME = "labeledVolume"  # + pair index
ROLE_LABELED_SEGMENTATION = "labeledSegmentation"  # + pair index
ROLE_UNLABELED_VOLUME = "unlabeledVolume"
ROLE_PREDICT_VOLUME = "predictVolume"


class ParameterNode:
    """Typed access to the module's ``vtkMRMLScriptedModuleNode`` (saved with the scene).

    Scalars are stored as JSON strings under ``<section>.<field>`` names; node lists
    as ordered node references. Labeled cases are two parallel reference lists.
    """

    MODULE_NAME = "SemiSupUncertainty"

    def __init__(self, node) -> None:
        self.node = node

    @classmethod
    def getOrCreate(cls, scene=None, moduleName: str = MODULE_NAME) -> "ParameterNode":
        """The scene's singleton parameter node of the module (what ScriptedLoadableModuleLogic does)."""
        if scene is None:
            import slicer

            scene = slicer.mrmlScene
        node = scene.GetSingletonNode(moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)  # CreateNodeByClass returns a new reference
            node.SetSingletonTag(moduleName)
            node.SetModuleName(moduleName)
            node.SetName(scene.GenerateUniqueName(moduleName))
            node = scene.AddNode(node)
        return cls(node)

    # -- scalars ---------------------------------------------------------------
    def _set(self, key: str, value: Any) -> None:
        text = json.dumps(value)
        if self.node.GetParameter(key) != text:
            self.node.SetParameter(key, text)

    def _get(self, key: str, default: Any) -> Any:
        text = self.node.GetParameter(key)
        if not text:
            return default
        try:
            return json.loads(text)
        except ValueError:
            return default

    def saveState(self, state: GuiState) -> None:
        wasModifying = self.node.StartModify()
        try:
            for section in ("training", "prediction"):
                obj = getattr(state, section)
                for f in dataclasses.fields(obj):
                    self._set(f"{section}.{f.name}", getattr(obj, f.name))
            for f in dataclasses.fields(GuiState):
                if f.name not in ("training", "prediction"):
                    self._set(f.name, getattr(state, f.name))
        finally:
            self.node.EndModify(wasModifying)

    def loadState(self) -> GuiState:
        state = GuiState()
        for section in ("training", "prediction"):
            obj = getattr(state, section)
            for f in dataclasses.fields(obj):
                setattr(obj, f.name, self._get(f"{section}.{f.name}", getattr(obj, f.name)))
        for f in dataclasses.fields(GuiState):
            if f.name not in ("training", "prediction"):
                setattr(state, f.name, self._get(f.name, getattr(state, f.name)))
        return state

    # -- node lists ------------------------------------------------------------
    def setNodes(self, role: str, nodes: Sequence) -> None:
        wasModifying = self.node.StartModify()
        try:
            self.node.RemoveNodeReferenceIDs(role)
            for n in nodes:
                self.node.AddNodeReferenceID(role, n.GetID() if n is not None else "")
        finally:
            self.node.EndModify(wasModifying)

    def nodes(self, role: str) -> list:
        return [self.node.GetNthNodeReference(role, i) for i in range(self.node.GetNumberOfNodeReferences(role))]

    def setLabeledPairs(self, pairs: Sequence[tuple]) -> None:
        """One reference role per pair and side: MRML drops the reference of a deleted node, which
        would shift a list and mismatch volumes with segmentations; per-pair roles cannot."""
        wasModifying = self.node.StartModify()
        try:
            for i in range(int(self._get("labeledPairCount", 0))):
                self.node.RemoveNodeReferenceIDs(f"{ROLE_LABELED_VOLUME}{i}")
                self.node.RemoveNodeReferenceIDs(f"{ROLE_LABELED_SEGMENTATION}{i}")
            for i, (volume, segmentation) in enumerate(pairs):
                self.node.SetNodeReferenceID(f"{ROLE_LABELED_VOLUME}{i}", volume.GetID())
                self.node.SetNodeReferenceID(f"{ROLE_LABELED_SEGMENTATION}{i}", segmentation.GetID())
            self._set("labeledPairCount", len(pairs))
        finally:
            self.node.EndModify(wasModifying)

    def labeledPairs(self) -> list[tuple]:
        """Pairs whose two nodes still exist (a deleted node drops its pair)."""
        pairs = []
        for i in range(int(self._get("labeledPairCount", 0))):
            volume = self.node.GetNodeReference(f"{ROLE_LABELED_VOLUME}{i}")
            segmentation = self.node.GetNodeReference(f"{ROLE_LABELED_SEGMENTATION}{i}")
            if volume is not None and segmentation is not None:
                pairs.append((volume, segmentation))
        return pairs

    def setUnlabeledVolumes(self, volumes: Sequence) -> None:
        self.setNodes(ROLE_UNLABELED_VOLUME, volumes)

    def unlabeledVolumes(self) -> list:
        return [n for n in self.nodes(ROLE_UNLABELED_VOLUME) if n is not None]

    def setPredictVolumes(self, volumes: Sequence) -> None:
        self.setNodes(ROLE_PREDICT_VOLUME, volumes)

    def predictVolumes(self) -> list:
        return [n for n in self.nodes(ROLE_PREDICT_VOLUME) if n is not None]
