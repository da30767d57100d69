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
