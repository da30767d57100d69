"""GUI state in a parameter node (saved with the scene) and settings -> the core library's config."""

from __future__ import annotations

import yaml

from mrml_helpers import addLabeledCase, obliqueVolume
from SemiSupUncertaintyLib import GuiState, ParameterNode, SemiSupUncertaintyLogic, TrainingSettings
from SemiSupUncertaintyLib.Parameters import autoPatchSize


def test_state_and_node_selections_survive_saving_and_reloading_the_scene(scene, tmp_path):
    import slicer

    params = ParameterNode.getOrCreate(scene)
    assert ParameterNode.getOrCreate(scene).node is params.node  # one per scene
    state = GuiState(runsDirectory=str(tmp_path / "runs"), runName="liver", currentRunDir="/runs/a", planPath="/runs/p/plan.yaml")
    state.training.method, state.training.iterations, state.training.patchSize = "mt", 1234, [96, 96, 64]
    state.training.validationFraction = 0.25
    state.prediction.mcSamples = 4
    params.saveState(state)
    v1, s1 = addLabeledCase(scene, "CT1", seed=1)
    v2, s2 = addLabeledCase(scene, "CT2", seed=2)
    u = obliqueVolume(scene, "U", seed=3)
    params.setLabeledPairs([(v1, s1), (v2, s2)])
    params.setUnlabeledVolumes([u])
    params.setPredictVolumes([u, v2])

    scene.SetRootDirectory(str(tmp_path))
    scene.SetURL(str(tmp_path / "scene.mrml"))
    assert scene.Commit()
    reloaded = slicer.vtkMRMLScene()
    reloaded.SetURL(str(tmp_path / "scene.mrml"))
    assert reloaded.Connect()
    again = ParameterNode.getOrCreate(reloaded)
    assert again.loadState() == state
    assert [(v.GetName(), s.GetName()) for v, s in again.labeledPairs()] == [("CT1", "CT1 segmentation"), ("CT2", "CT2 segmentation")]
    assert [v.GetName() for v in again.unlabeledVolumes()] == ["U"]
    assert [v.GetName() for v in again.predictVolumes()] == ["U", "CT2"]


def test_a_deleted_node_drops_its_pair(scene):
    params = ParameterNode.getOrCreate(scene)
    v1, s1 = addLabeledCase(scene, "CT1", seed=1)
    v2, s2 = addLabeledCase(scene, "CT2", seed=2)
    params.setLabeledPairs([(v1, s1), (v2, s2)])
    scene.RemoveNode(s1)
    assert [v.GetName() for v, _ in params.labeledPairs()] == ["CT2"]


def test_defaults_when_nothing_was_saved(scene):
    assert ParameterNode.getOrCreate(scene).loadState() == GuiState()


def test_settings_become_a_valid_core_config(tmp_path):
    """Every key the settings write is a key of the core library's RunConfig."""
    from semisup.config import RunConfig

    settings = TrainingSettings(method="uamt", iterations=300, learningRate=0.02, modality="ct")
    overrides = settings.configOverrides([(24, 20, 16), (40, 40, 40)])
    assert overrides["data.patch_size"] == [16, 16, 16] and overrides["data.modality"] == "CT" and overrides["train.lr"] == 0.02
    path = SemiSupUncertaintyLogic(scene=object()).writeConfig(tmp_path, overrides)
    raw = yaml.safe_load(path.read_text())
    cfg = RunConfig.from_dict(raw)  # the core library's own validation accepts it
    assert cfg.train.iterations == 300 and cfg.data.patch_size == [16, 16, 16] and cfg.data.dataset == "dataset.json"


def test_settings_read_back_from_the_config_they_wrote(tmp_path):
    """``fromConfig`` (how a plan fills the panel) inverts ``configOverrides``; what a config lacks keeps the default."""
    settings = TrainingSettings(method="ucmt", network="unet2d", iterations=321, patchSize=[96, 64], spatialDims=2, labeledBatch=4,
                                unlabeledBatch=3, baseFilters=8, modality="CT", device="cpu", valEvery=50, checkpointEvery=25, learningRate=0.003)
    path = SemiSupUncertaintyLogic(scene=object()).writeConfig(tmp_path, settings.configOverrides())
    assert TrainingSettings.fromConfig(yaml.safe_load(path.read_text())) == settings
    assert TrainingSettings.fromConfig({"train": {"iterations": 7}}) == TrainingSettings(iterations=7)


def test_settings_explain_what_is_wrong():
    assert TrainingSettings().validationError() == ""
    assert "iterations" in TrainingSettings(iterations=0).validationError()
    assert "patch size needs 3" in TrainingSettings(patchSize=[64, 64]).validationError()
    assert "modality" in TrainingSettings(modality="PET").validationError()


def test_automatic_patch_size():
    assert autoPatchSize([(24, 20, 16)]) == [16, 16, 16]
    assert autoPatchSize([(256, 256, 120), (200, 220, 90)]) == [112, 112, 80]
    assert autoPatchSize([(10, 10, 5)]) == [16, 16, 16]  # smaller volumes are padded by the core library
    assert autoPatchSize([(256, 200, 10)], spatialDims=2) == [112, 112]
