"""Result files -> nodes with the real MRML classes: geometry equal to the input's, named segments."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from mrml_helpers import kidneyMask, liverMask, obliqueVolume, segmentArray
from SemiSupUncertaintyLib import SceneImporter
from SemiSupUncertaintyLib.MRMLIO import ijkToRas, sameGeometry, writeVolume
from SemiSupUncertaintyLib.SceneImporter import CLASS_COLORS, ScoreRow


def workerOutput(volume, array: np.ndarray, path, tmp_path):
    """Write ``array`` on ``volume``'s grid the way the core library does: SimpleITK, CopyInformation."""
    reference = sitk.ReadImage(str(writeVolume(volume, tmp_path / "reference.nrrd")))
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    sitk.WriteImage(image, str(path), True)
    return path


def test_label_map_becomes_one_named_coloured_segment_per_class(scene, tmp_path):
    volume = obliqueVolume(scene, "CT7", seed=7)
    label = (liverMask() + 2 * kidneyMask()).astype(np.uint8)  # class 3 ("Spleen") not predicted
    path = workerOutput(volume, label, tmp_path / "CT7_label.nrrd", tmp_path)
    seg = SceneImporter(scene).segmentationFromLabelmapFile(path, ["Liver", "Kidney", "Spleen"], volume, "CT7 segmentation")
    segmentation = seg.GetSegmentation()
    assert seg.GetName() == "CT7 segmentation"
    assert [segmentation.GetNthSegment(i).GetName() for i in range(3)] == ["Liver", "Kidney", "Spleen"]
    colors = [tuple(round(c, 3) for c in segmentation.GetNthSegment(i).GetColor()) for i in range(3)]
    assert len(set(colors)) == 3 and colors[0] == tuple(round(c, 3) for c in CLASS_COLORS[0])
    np.testing.assert_array_equal(segmentArray(seg, "Liver", volume), liverMask())
    np.testing.assert_array_equal(segmentArray(seg, "Kidney", volume), kidneyMask())
    assert segmentArray(seg, "Spleen", volume).sum() == 0
    # Reference geometry is the input's: segment editing happens on the input's grid.
    reference = seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole())
    assert reference is volume
    # The internal labelmap lies on the input's grid: same directions and spacing.
    oriented = segmentation.GetNthSegment(0).GetRepresentation("Binary labelmap")
    import vtk

    m = vtk.vtkMatrix4x4()
    oriented.GetImageToWorldMatrix(m)
    np.testing.assert_allclose([[m.GetElement(r, c) for c in range(3)] for r in range(3)], ijkToRas(volume)[:3, :3], atol=1e-5)


def test_uncertainty_volume_has_the_input_geometry_and_a_colour_map(scene, tmp_path):
    import slicer

    volume = obliqueVolume(scene, "CT8", seed=8)
    values = np.linspace(0, 0.7, 24 * 20 * 16, dtype=np.float32).reshape(16, 20, 24)
    path = workerOutput(volume, values, tmp_path / "CT8_uncertainty.nrrd", tmp_path)
    node = SceneImporter(scene).uncertaintyVolumeFromFile(path, "CT8 uncertainty")
    assert sameGeometry(node, volume)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(node), values)
    display = node.GetDisplayNode()
    assert display.GetColorNodeID() in ("vtkMRMLPETProceduralColorNodePET-Heat", "vtkMRMLColorTableNodeFileInferno.txt", "vtkMRMLColorTableNodeFileViridis.txt", "vtkMRMLColorTableNodeRainbow")
    assert display.GetWindowLevelMin() == 0.0 and abs(display.GetWindowLevelMax() - 0.7) < 1e-5
    assert display.GetApplyThreshold() and node.GetAttribute("SemiSupUncertainty.Role") == "uncertainty"


def test_overlay_and_subject_hierarchy_placement(scene, tmp_path):
    volume = obliqueVolume(scene, "CT9", seed=9)
    unc = obliqueVolume(scene, "CT9 uncertainty", seed=10)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "CT9 segmentation")
    seg.CreateDefaultDisplayNodes()
    composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    sh = scene.GetSubjectHierarchyNode()
    study = sh.CreateStudyItem(sh.GetSceneItemID(), "Study")
    sh.CreateItem(study, volume)
    sh.CreateItem(sh.GetSceneItemID(), unc)
    importer = SceneImporter(scene)
    importer.placeBeside(unc, volume)
    assert sh.GetItemParent(sh.GetItemByDataNode(unc)) == study
    importer.showOverlay(volume, unc, seg)
    assert composite.GetBackgroundVolumeID() == volume.GetID() and composite.GetForegroundVolumeID() == unc.GetID()
    assert composite.GetForegroundOpacity() == 0.5


def test_ranking_table_puts_the_most_uncertain_volume_first(scene):
    rows = [
        ScoreRow("A", {"mean_uncertainty_foreground": 0.2, "mean_uncertainty_image": 0.1, "foreground_voxels": 10}, "id-A"),
        ScoreRow("B", {"mean_uncertainty_foreground": 0.6, "mean_uncertainty_image": 0.3, "foreground_voxels": 12}, "id-B"),
        ScoreRow("C", {"mean_uncertainty_foreground": 0.0, "mean_uncertainty_image": 0.05, "foreground_voxels": 0}, "id-C"),
    ]
    table = SceneImporter(scene).scoreTable(rows)
    columns = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    assert columns[:3] == ["Rank", "Volume", "Uncertainty score"] and "foreground_voxels" in columns and "Note" in columns
    assert [table.GetCellText(r, 1) for r in range(3)] == ["B", "A", "C"]
    assert [table.GetCellText(r, 0) for r in range(3)] == ["1", "2", "3"]
    assert "nothing segmented" in table.GetCellText(2, columns.index("Note"))
    assert table.GetCellText(0, columns.index("Volume node ID")) == "id-B"
    # A size unlike the labeled cases' (predict's size_flagged) is named in the note; 0 leaves it empty.
    rows[0].scores["size_flagged"], rows[1].scores["size_flagged"] = 1.0, 0.0
    table = SceneImporter(scene).scoreTable(rows)
    note = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())].index("Note")
    assert "size unlike the labeled cases" in table.GetCellText(1, note) and table.GetCellText(0, note) == ""
