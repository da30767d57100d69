"""Several volumes per case, multi-component volumes and "ignore" segments, with real MRML nodes,
read back by the core library."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from mrml_helpers import addSegmentation, kidneyMask, liverMask, obliqueVolume
from SemiSupUncertaintyLib.ChannelInputs import (
    checkChannelVolumes,
    exportChannelVolumes,
    exportSparseLabelmap,
    exportVectorVolume,
    labelsWithIgnore,
    splitIgnoreClass,
)
from SemiSupUncertaintyLib.SceneExporter import InputError


def test_channel_volumes_export_and_read_as_one_case(scene, tmp_path):
    import slicer

    from semisup.data.dataset import group_inputs
    from semisup.data.io import channels_to_array, read_channels

    t2 = obliqueVolume(scene, "T2", seed=1)
    adc = obliqueVolume(scene, "ADC", seed=2)
    files = exportChannelVolumes([t2, adc], tmp_path, "prostate 1")
    assert [f.name for f in files] == ["prostate_1_0000.nrrd", "prostate_1_0001.nrrd"]
    (case,) = group_inputs(files, 2)
    assert case.name == "prostate_1"
    arr = channels_to_array(read_channels(case.files))  # (2, x, y, z)
    for c, node in enumerate((t2, adc)):
        np.testing.assert_allclose(arr[c], slicer.util.arrayFromVolume(node).T)


def test_channel_volumes_on_other_grids_are_named(scene):
    t2 = obliqueVolume(scene, "T2", seed=1)
    shifted = obliqueVolume(scene, "ADC", seed=2, origin=(12.0, -20.0, 30.0))
    coarse = obliqueVolume(scene, "DWI", seed=3, spacing=(0.8, 0.9, 5.0))
    with pytest.raises(InputError) as info:
        checkChannelVolumes([t2, shifted, coarse])
    text = str(info.value)
    assert "volume 'ADC' is not on the grid of 'T2' (origin" in text
    assert "volume 'DWI' is not on the grid of 'T2' (spacing" in text
    assert "resample it onto the first" in text
    checkChannelVolumes([t2, obliqueVolume(scene, "T2 copy", seed=4)])  # same grid: no error


def test_vector_volume_exports_as_channels(scene, tmp_path):
    import slicer

    from semisup.data.io import channels_to_array, read_channels

    node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "photo")
    rgb = np.random.default_rng(0).integers(0, 255, size=(1, 20, 24, 3), dtype=np.uint8)  # (z, y, x, C)
    slicer.util.updateVolumeFromArray(node, rgb)
    path, channels = exportVectorVolume(node, tmp_path / "photo.nrrd")
    assert channels == 3
    arr = channels_to_array(read_channels(path))
    assert arr.shape == (3, 24, 20, 1)
    np.testing.assert_array_equal(arr[:, :, :, 0], np.moveaxis(rgb[0], -1, 0).transpose(0, 2, 1))
    with pytest.raises(InputError, match="'T2' is a vtkMRMLScalarVolumeNode, not a multi-component volume"):
        exportVectorVolume(obliqueVolume(scene, "T2"), tmp_path / "t2.nrrd")


def test_ignore_segment_becomes_the_ignore_label(scene, tmp_path):
    from semisup.data.dataset import DatasetSpec

    volume = obliqueVolume(scene, "CT1", seed=1)
    unlabeled = np.zeros_like(liverMask())
    unlabeled[8:, :, :] = 1  # the upper slices were not labeled (overlapping part of the kidney)
    segmentation = addSegmentation(scene, volume, "seg", {"Liver": liverMask(), "Unlabeled region": unlabeled,
                                                           "Kidney": kidneyMask()})
    assert splitIgnoreClass(["Liver", "Unlabeled region", "Kidney"]) == (["Liver", "Kidney"], "Unlabeled region")
    path, labels = exportSparseLabelmap(scene, segmentation, volume, ["Liver", "Unlabeled region", "Kidney"],
                                        tmp_path / "labelsTr" / "CT1.nrrd")
    assert labels == {"0": "background", "1": "Liver", "2": "Kidney", "ignore": 3}
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))  # (z, y, x) like the masks
    expected = liverMask() + 2 * kidneyMask()
    expected[(unlabeled == 1) & (expected == 0)] = 3  # painted classes win over the ignore region
    np.testing.assert_array_equal(arr, expected)
    # The core reads the declaration as nnU-Net v2's ignore label.
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": labels, "training": [
        {"image": "./labelsTr/CT1.nrrd", "label": "./labelsTr/CT1.nrrd"}]}))
    spec = DatasetSpec.from_json(tmp_path / "dataset.json")
    assert spec.ignore_label == 3 and spec.class_names == ["background", "Liver", "Kidney"]
    with pytest.raises(InputError, match="all mark unlabeled voxels"):
        labelsWithIgnore(["ignore", "Unlabeled Region"])


def _vectorVolume(scene, name: str, seed: int, components: int = 3):
    """An oblique multi-component volume (z, y, x, C) on the grid of ``obliqueVolume``."""
    import slicer

    from mrml_helpers import SHAPE_XYZ, obliqueDirections, setGeometry

    x, y, z = SHAPE_XYZ
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 50, size=(z, y, x, components)).astype(np.uint8)
    arr[liverMask() > 0] += 150  # the structure is bright in every channel
    node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, arr)
    setGeometry(node, obliqueDirections())
    node.CreateDefaultDisplayNodes()
    return node


def _sparseVectorScene(scene):
    """Two labeled RGB cases (the first labeled on its lower slices only) and one unlabeled RGB volume."""
    unlabeled = np.zeros_like(liverMask())
    unlabeled[8:, :, :] = 1  # upper slices nobody labeled; overlaps the liver (the painted class wins)
    first = _vectorVolume(scene, "RGB1", seed=1)
    second = _vectorVolume(scene, "RGB2", seed=2)
    pairs = [
        (first, addSegmentation(scene, first, "RGB1 segmentation", {"Liver": liverMask(), "Ignore": unlabeled})),
        (second, addSegmentation(scene, second, "RGB2 segmentation", {"Liver": liverMask()})),
    ]
    return pairs, _vectorVolume(scene, "RGB3", seed=3), unlabeled


def test_vector_volumes_with_an_ignore_segment_export_a_dataset_the_core_trains_on(scene, tmp_path):
    from semisup.data.checks import check_dataset, count_channels
    from semisup.data.dataset import DatasetSpec
    from semisup.protocol.run_folder import class_names_of_run

    from SemiSupUncertaintyLib.SceneExporter import SceneExporter

    pairs, rgb3, unlabeled = _sparseVectorScene(scene)
    exporter = SceneExporter(scene)
    # segmentations drawn on RGB volumes pair with them; RGB volumes are never offered by default (#15)
    assert {(v.GetName(), s.GetName()) for v, s in exporter.pairSegmentationsWithVolumes()} == {(v.GetName(), s.GetName()) for v, s in pairs}
    assert exporter.defaultUnlabeledVolumes(pairs) == []
    assert [v.GetName() for v in exporter.inputVolumes()] == ["RGB1", "RGB2", "RGB3"]

    assert exporter.checkInputs(pairs, [rgb3]) == ["Liver"]  # "Ignore" is not a class
    dataset = exporter.export(tmp_path / "run", pairs, [rgb3])
    assert dataset.classNames == ["Liver"] and dataset.ignoreLabel == 2
    raw = json.loads((tmp_path / "run" / "dataset.json").read_text())
    assert raw["labels"] == {"0": "background", "1": "Liver", "ignore": 2}
    assert class_names_of_run(tmp_path / "run") == ["Liver"]  # what prediction names its segments after

    spec = DatasetSpec.from_json(tmp_path / "run" / "dataset.json")
    assert spec.ignore_label == 2 and spec.class_names == ["background", "Liver"]
    check_dataset(spec, 3)  # what the trainer checks first: raises on any problem
    assert count_channels(spec) == 3
    first = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "run" / "labelsTr" / "RGB1.nrrd")))
    expected = liverMask().copy()
    expected[(unlabeled == 1) & (expected == 0)] = 2
    np.testing.assert_array_equal(first, expected)
    second = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "run" / "labelsTr" / "RGB2.nrrd")))
    np.testing.assert_array_equal(second, liverMask())  # fully labeled case: no ignore voxels
    image = sitk.ReadImage(str(tmp_path / "run" / "imagesTr" / "RGB1.nrrd"))
    assert image.GetNumberOfComponentsPerPixel() == 3


def test_mixed_component_counts_are_refused_naming_the_volume(scene, tmp_path):
    from mrml_helpers import addLabeledCase

    from SemiSupUncertaintyLib.SceneExporter import SceneExporter

    exporter = SceneExporter(scene)
    grey = [addLabeledCase(scene, "CT1", seed=1)]
    rgb = _vectorVolume(scene, "Photo", seed=4)
    with pytest.raises(InputError, match="volume 'Photo' has 3 component\\(s\\) per voxel but 'CT1' has 1"):
        exporter.export(tmp_path / "run", grey, [rgb])
    assert not (tmp_path / "run").exists()  # nothing written
    twoChannel = _vectorVolume(scene, "Pair", seed=5, components=2)
    with pytest.raises(InputError, match="volume 'Pair' has 2 component\\(s\\) per voxel but the trained run \\(channels: 3\\) has 3"):
        exporter.exportVolumes([rgb, twoChannel], tmp_path / "inputs", channels=3)
    assert [r.name for r in exporter.exportVolumes([rgb], tmp_path / "inputs", channels=3)] == ["Photo"]
    tensor = scene.AddNewNodeByClass("vtkMRMLDiffusionTensorVolumeNode", "DTI")
    with pytest.raises(InputError, match="'DTI' is not a scalar volume"):
        exporter.exportVolumes([tensor], tmp_path / "inputs")


def test_two_ignore_segments_in_one_case_are_refused(scene):
    from SemiSupUncertaintyLib.SceneExporter import SceneExporter

    volume = obliqueVolume(scene, "CT1", seed=1)
    unlabeled = np.zeros_like(liverMask())
    unlabeled[8:] = 1
    seg = addSegmentation(scene, volume, "seg", {"Liver": liverMask(), "ignore": unlabeled, "Unlabeled region": unlabeled})
    with pytest.raises(InputError, match="all mark unlabeled voxels"):
        SceneExporter(scene).checkInputs([(volume, seg)])
