"""Scene defects found by the audit, each on real MRML nodes (slicer-core): orphan nodes, non-scalar
volumes, numbered file names, colours and terminology of predicted segments."""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk

from mrml_helpers import addLabeledCase, kidneyMask, liverMask, obliqueVolume
from SemiSupUncertaintyLib import SceneExporter, SceneImporter
from SemiSupUncertaintyLib.MRMLIO import readVolume, writeVolume
from SemiSupUncertaintyLib.RunFolder import classStylesOfRun

# A terminology entry as Slicer's terminology selector stores it (SNOMED-CT category, type).
LIVER_TERMINOLOGY = "Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure~SCT^10200004^Liver~^^~Anatomic codes - DICOM master list~^^~^^"


def nodeCounts(scene) -> dict[str, int]:
    counts: dict[str, int] = {}
    for i in range(scene.GetNumberOfNodes()):
        name = scene.GetNthNode(i).GetClassName()
        counts[name] = counts.get(name, 0) + 1
    return counts


def test_exporting_labels_leaves_no_node_behind(scene, tmp_path):
    volume, seg = addLabeledCase(scene, "CT1", seed=1)
    exporter = SceneExporter(scene)
    exporter.exportLabelmap(seg, volume, ["Liver", "Kidney"], tmp_path / "first.nrrd")  # the scene's singletons appear once
    before = nodeCounts(scene)
    for i in range(3):
        exporter.exportLabelmap(seg, volume, ["Liver", "Kidney"], tmp_path / f"l{i}.nrrd")
    assert nodeCounts(scene) == before  # no labelmap display node, no colour table per export


def test_importing_a_prediction_adds_only_the_segmentation(scene, tmp_path):
    volume = obliqueVolume(scene, "CT7", seed=7)
    reference = sitk.ReadImage(str(writeVolume(volume, tmp_path / "reference.nrrd")))
    image = sitk.GetImageFromArray((liverMask() + 2 * kidneyMask()).astype(np.uint8))
    image.CopyInformation(reference)
    sitk.WriteImage(image, str(tmp_path / "label.nrrd"))
    importer = SceneImporter(scene)
    importer.segmentationFromLabelmapFile(tmp_path / "label.nrrd", ["Liver", "Kidney"], volume, "first")
    before = nodeCounts(scene)
    importer.segmentationFromLabelmapFile(tmp_path / "label.nrrd", ["Liver", "Kidney"], volume, "second")
    after = nodeCounts(scene)
    added = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}
    assert added == {"vtkMRMLSegmentationNode": 1, "vtkMRMLSegmentationDisplayNode": 1}


def test_vector_rgb_tensor_and_dwi_volumes_are_not_unlabeled_candidates(scene):
    import slicer

    pairs = [addLabeledCase(scene, "CT1", seed=1)]
    grey = obliqueVolume(scene, "CT2", seed=2)
    others = {}
    for nodeClass in ("vtkMRMLVectorVolumeNode", "vtkMRMLStreamingVolumeNode", "vtkMRMLDiffusionTensorVolumeNode", "vtkMRMLDiffusionWeightedVolumeNode", "vtkMRMLLabelMapVolumeNode"):
        node = scene.AddNewNodeByClass(nodeClass, nodeClass)
        components = 1 if nodeClass == "vtkMRMLLabelMapVolumeNode" else 3
        imageData = slicer.vtkImageData() if hasattr(slicer, "vtkImageData") else __import__("vtk").vtkImageData()
        imageData.SetDimensions(8, 8, 4)
        imageData.AllocateScalars(__import__("vtk").VTK_FLOAT, components)
        node.SetAndObserveImageData(imageData)
        others[nodeClass] = node
    exporter = SceneExporter(scene)
    assert [v.GetName() for v in exporter.defaultUnlabeledVolumes(pairs)] == ["CT2"]
    assert [v.GetName() for v in exporter.scalarVolumes()] == ["CT1", "CT2"]
    assert grey in exporter.defaultUnlabeledVolumes(pairs)
    # chosen by hand, each is refused with its name
    for node in others.values():
        try:
            exporter.checkInputs(pairs, [node])
        except ValueError as exc:
            if node.GetClassName() == "vtkMRMLVectorVolumeNode":  # an input kind, but 3 channels vs CT1's 1
                assert f"volume '{node.GetName()}' has 3 component(s) per voxel but 'CT1' has 1" in str(exc)
            else:
                assert f"'{node.GetName()}' is not a scalar volume" in str(exc)
        else:
            raise AssertionError(f"{node.GetClassName()} accepted as an unlabeled volume")


def test_a_numbered_file_name_loads_that_file_only(scene, tmp_path):
    import slicer

    for i in range(1, 4):  # sl_001.nrrd .. sl_003.nrrd: ITK's archetype reader takes them for one series
        sitk.WriteImage(sitk.GetImageFromArray(np.full((1, 20, 24), 10 * i, np.int16)), str(tmp_path / f"sl_{i:03d}.nrrd"))
    loaded = readVolume(scene, tmp_path / "sl_002.nrrd")
    assert loaded.GetImageData().GetDimensions() == (24, 20, 1)  # without SetSingleFile(1): (24, 20, 3)
    assert np.unique(slicer.util.arrayFromVolume(loaded)).tolist() == [20]


def test_predicted_segments_keep_the_training_colours_and_terminology(scene, tmp_path):
    pairs = [addLabeledCase(scene, f"CT{i}", seed=i) for i in (1, 2)]
    liver = pairs[0][1].GetSegmentation().GetSegment(pairs[0][1].GetSegmentation().GetSegmentIdBySegmentName("Liver"))
    liver.SetColor(0.1, 0.2, 0.3)
    liver.SetTerminology(LIVER_TERMINOLOGY)
    exported = SceneExporter(scene).export(tmp_path / "run", pairs, [])
    styles = classStylesOfRun(tmp_path / "run")
    assert styles == exported.classStyles and styles["Liver"] == {"color": [0.1, 0.2, 0.3], "terminology": LIVER_TERMINOLOGY}
    assert json.loads((tmp_path / "run" / "slicer-cases.json").read_text())["classStyles"]["Kidney"]["color"]

    volume = pairs[0][0]
    prediction = SceneImporter(scene).segmentationFromLabelmapFile(tmp_path / "run" / "labelsTr" / "CT1.nrrd", exported.classNames, volume, "CT1 prediction", styles)
    segmentation = prediction.GetSegmentation()
    back = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("Liver"))
    np.testing.assert_allclose(back.GetColor(), (0.1, 0.2, 0.3), atol=1e-6)
    assert back.GetTerminology() == LIVER_TERMINOLOGY
    kidney = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("Kidney"))
    original = pairs[0][1].GetSegmentation().GetSegment(pairs[0][1].GetSegmentation().GetSegmentIdBySegmentName("Kidney"))
    np.testing.assert_allclose(kidney.GetColor(), original.GetColor(), atol=1e-6)
