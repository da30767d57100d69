"""``semisup plan``: the fingerprint of real files and the rules that turn it into a config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from semisup.config import load_config
from semisup.data.fingerprint import dataset_fingerprint
from semisup.data.plan import DEFAULT_CPU_MINUTES, RATES_IT_PER_S, _iterations, _round_patch, plan_from_fingerprint, plan_yaml
from semisup.data.synthetic import make_synthetic_dataset

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "SemiSupUncertainty"), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("plan")
    return make_synthetic_dataset(root, labeled=3, unlabeled=4, validation=1, test=1, shape=(48, 40, 32),
                                  spacing=(1.0, 1.0, 1.5), seed=2)


def test_fingerprint_of_the_synthetic_dataset(synthetic) -> None:
    fp = dataset_fingerprint(synthetic, max_cases=2, device="cpu")
    assert (fp.labeled, fp.unlabeled, fp.validation, fp.test) == (3, 4, 1, 1)
    assert fp.spacing_median == pytest.approx([1.0, 1.0, 1.5]) and fp.size_median == [48, 40, 32]
    assert fp.anisotropy == pytest.approx(1.5) and fp.cases_read == 2
    assert fp.modality == "MR" and fp.device == "cpu" and fp.device_memory_gib > 0
    (name, sizes), = fp.class_sizes.items()
    assert name == fp.classes[1] and 0 < sizes["median_fraction"] < 1
    # ml = voxels x voxel volume (1 x 1 x 1.5 mm^3 = 0.0015 ml)
    assert sizes["median_ml"] == pytest.approx(sizes["median_voxels"] * 0.0015)
    assert fp.intensity_foreground["p0.5"] <= fp.intensity_foreground["p50"] <= fp.intensity_foreground["p99.5"]


def test_rules_hand_computed() -> None:
    # Multiples of 16 not above the value, at least 16, capped: 95.9 -> 80, 40 -> 32 (cap), 10 -> 16.
    assert _round_patch([95.9, 70.0, 10.0], 16, [112, 32, 80]) == [80, 32, 16]
    # 60 min x 0.72 it/s = 2592 -> 2500 (hundreds); supervised 3-D: 60 x 60 x 5.2 = 18720 -> paper cap 6000.
    assert _iterations(60, 3, "ucmt") == 2500 and _iterations(60, 3, "supervised") == 6000
    assert RATES_IT_PER_S[(2, "supervised")] == pytest.approx(400 / 96)


def test_plan_by_budget(synthetic) -> None:
    fp = dataset_fingerprint(synthetic, max_cases=1, device="cpu")
    cpu = plan_from_fingerprint(fp, device="cpu")
    cfg = cpu.config
    assert cfg.data.spatial_dims == 3 and cfg.network.name == "vnet" and cfg.network.base_filters == 8
    assert cfg.data.target_spacing == [2.0, 2.0, 3.0] and cfg.data.patch_size == [16, 16, 16]  # 24 x 20 x 16 voxels
    assert cfg.method.name == "ucmt" and cfg.method.params["ema_alpha"] == 0.99 and cfg.train.optimizer == "sgd"
    assert cfg.train.iterations == _iterations(DEFAULT_CPU_MINUTES, 3, "ucmt")
    assert cfg.inference.blend_mode == "gaussian" and cfg.inference.shared_masks and cfg.inference.largest_component == "auto"
    # A short budget: fewer UCMT iterations than any method needed to separate -> supervised.
    short = plan_from_fingerprint(fp, budget_minutes=10, device="cpu").config
    assert short.method.name == "supervised" and short.train.iterations == 3100  # 10 x 60 x 5.2 = 3120
    # A GPU at the paper budget: native grid, 16 filters, UCMT's paper recipe.
    gpu = plan_from_fingerprint(fp, device="gpu").config
    assert gpu.data.target_spacing is None and gpu.network.base_filters == 16 and gpu.data.patch_size == [48, 32, 32]
    assert gpu.method.params["ema_alpha"] == 0.999 and gpu.train.optimizer == "adamw" and gpu.train.iterations == 20000
    assert "method" in cpu.reasons and "train.iterations" in cpu.reasons


def test_plan_command_writes_an_editable_config(synthetic, tmp_path) -> None:
    out = tmp_path / "plan.yaml"
    proc = subprocess.run([sys.executable, "-m", "semisup", "plan", str(synthetic.parent), "--output", str(out),
                           "--device", "cpu", "--max-cases", "1", "--budget-minutes", "60"],
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert text.startswith("# Planned by `semisup plan`") and "# method: ucmt with SGD + EMA 0.99" in text
    cfg = load_config(out)  # what `semisup train --config` reads
    assert cfg.method.name == "ucmt" and Path(cfg.data.dataset) == synthetic.resolve()
    fp = json.loads((tmp_path / "plan_fingerprint.json").read_text())
    assert fp["unlabeled"] == 4
    bad = subprocess.run([sys.executable, "-m", "semisup", "plan", str(tmp_path / "nothing")],
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "no dataset.json" in bad.stderr and "Traceback" not in bad.stderr


def test_real_fingerprints(shared_data) -> None:
    la = shared_data / "LA2018" / "dataset.json"
    acdc = shared_data / "ACDC" / "dataset.json"
    if not la.exists() or not acdc.exists():
        pytest.skip("LA2018 or ACDC missing from ../shared/data")
    fp_la = dataset_fingerprint(la, max_cases=1, device="cpu")
    assert fp_la.labeled == 80 and fp_la.spacing_median == pytest.approx([0.625] * 3) and fp_la.size_median[2] == 88
    plan_la = plan_from_fingerprint(fp_la, device="cpu").config
    # The benchmarks' LA2018 cpu setting: 1.25 mm, V-Net 8 filters, 48 x 48 x 32, a third on foreground.
    assert plan_la.data.spatial_dims == 3 and plan_la.data.target_spacing == [1.25, 1.25, 1.25]
    assert plan_la.data.patch_size == [48, 48, 32] and plan_la.data.foreground_oversample == 0.33
    fp_acdc = dataset_fingerprint(acdc, max_cases=1, device="cpu")
    assert fp_acdc.classes[1:] == ["right ventricle", "myocardium", "left ventricle"] and fp_acdc.labeled == 140
    plan_acdc = plan_from_fingerprint(fp_acdc, device="cpu")
    # ACDC's cpu setting: 2-D slices (z has 6-18 voxels), U-Net, 96 x 96, in-plane halved.
    assert plan_acdc.config.data.spatial_dims == 2 and plan_acdc.config.network.name == "unet2d"
    assert plan_acdc.config.data.patch_size == [96, 96] and plan_acdc.config.data.target_spacing == [2.0, 2.0, 1.0]
    assert yaml.safe_load(plan_yaml(plan_acdc, fp_acdc))["data"]["spatial_dims"] == 2


def test_fingerprint_leaves_out_ignored_voxels_and_reads_rgb(tmp_path) -> None:
    import numpy as np
    import SimpleITK as sitk

    # 4 x 4 x 2 voxels of 1 mm: z = 0 labeled (4 organ voxels of intensity 100), z = 1 all 'ignore' (2).
    lab = np.zeros((2, 4, 4), np.uint8)  # (z, y, x)
    lab[0, :2, :2] = 1
    lab[1] = 2
    rgb = np.zeros((2, 4, 4, 3), np.float32)
    rgb[..., 0] = 5.0
    rgb[0, :2, :2, 0] = 100.0
    rgb[1, ..., 0] = 1000.0  # intensities of ignored voxels must not reach the foreground statistics
    img = sitk.GetImageFromArray(rgb, isVector=True)
    sitk.WriteImage(img, str(tmp_path / "a.nrrd"))
    sitk.WriteImage(sitk.GetImageFromArray(lab), str(tmp_path / "a_seg.nrrd"))
    (tmp_path / "dataset.json").write_text(json.dumps({
        "labels": {"background": 0, "organ": 1, "ignore": 2},
        "training": [{"image": "a.nrrd", "label": "a_seg.nrrd"}],
    }))
    fp = dataset_fingerprint(tmp_path / "dataset.json", device="cpu")
    assert fp.classes == ["background", "organ"]
    organ = fp.class_sizes["organ"]
    assert organ["median_voxels"] == 4 and organ["median_fraction"] == pytest.approx(4 / 16)  # of the 16 labeled voxels
    assert fp.intensity_foreground["p0.5"] == pytest.approx(100.0) and fp.intensity_foreground["p99.5"] == pytest.approx(100.0)
