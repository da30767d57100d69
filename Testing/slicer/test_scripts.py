"""The headless scripts as real processes: files in, files out, exit codes (plain Python + slicer-core)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from mrml_helpers import STANDIN_DIR, addLabeledCase, kidneyMask, liverMask, obliqueVolume
from SemiSupUncertaintyLib.MRMLIO import writeSegmentation, writeVolume

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
STANDIN = ["--worker-module", "semisup_standin", "--worker-path", str(STANDIN_DIR)]


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPTS / script), "--", *args, *STANDIN], capture_output=True, text=True, timeout=120)


@pytest.fixture
def files(scene, tmp_path):
    """Two labeled cases (.seg.nrrd), one as a label map, and two unlabeled images on disk."""
    out = {"labeled": [], "unlabeled": []}
    for i in (1, 2):
        volume, seg = addLabeledCase(scene, f"CT{i}", seed=i)
        out["labeled"].append((str(writeVolume(volume, tmp_path / f"CT{i}.nrrd")), str(writeSegmentation(seg, tmp_path / f"CT{i}.seg.nrrd"))))
    for i in (3, 4):
        out["unlabeled"].append(str(writeVolume(obliqueVolume(scene, f"CT{i}", seed=i), tmp_path / f"CT{i}.nrrd")))
    # a label-map segmentation (1 = Liver, 2 = Kidney) written like any other tool would
    reference = sitk.ReadImage(out["labeled"][0][0])
    labels = sitk.GetImageFromArray((liverMask() + 2 * kidneyMask()).astype(np.uint8))
    labels.CopyInformation(reference)
    sitk.WriteImage(labels, str(tmp_path / "CT1_labels.nrrd"))
    out["labelmap"] = (out["labeled"][0][0], str(tmp_path / "CT1_labels.nrrd"))
    return out


def test_train_then_predict_from_files(files, tmp_path):
    labeled = [a for pair in files["labeled"] for a in ("--labeled", *pair)]
    trained = run("slicer_train.py", *labeled, "--unlabeled", *files["unlabeled"], "--run-dir", str(tmp_path / "run"), "--iterations", "6", "--set", "train.val_every=3")
    assert trained.returncode == 0, trained.stderr
    assert "Finished" in trained.stdout and "Trained:" in trained.stdout
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()

    predicted = run("slicer_predict.py", "--run-dir", str(tmp_path / "run"), "--input", *files["unlabeled"], "--output-dir", str(tmp_path / "out"))
    assert predicted.returncode == 0, predicted.stderr
    for name in ("CT3", "CT4"):
        import slicerio

        segmentation = slicerio.read_segmentation(str(tmp_path / "out" / f"{name}.seg.nrrd"))
        assert [s["name"] for s in segmentation["segments"]] == ["Liver", "Kidney"]
        uncertainty = sitk.ReadImage(str(tmp_path / "out" / f"{name}_uncertainty.nrrd"))
        source = sitk.ReadImage(str(tmp_path / f"{name}.nrrd"))
        assert uncertainty.GetSize() == source.GetSize()
        np.testing.assert_allclose(uncertainty.GetDirection(), source.GetDirection(), atol=1e-6)
        np.testing.assert_allclose(uncertainty.GetOrigin(), source.GetOrigin(), atol=1e-4)
    ranking = (tmp_path / "out" / "uncertainty_ranking.csv").read_text().splitlines()
    assert ranking[0].startswith("Rank,Volume,Uncertainty score") and len(ranking) == 3


def test_label_map_segmentations_with_class_names(files, tmp_path):
    trained = run("slicer_train.py", "--labeled", *files["labelmap"], "--labeled", *files["labeled"][1], "--classes", "Liver", "Kidney", "--run-dir", str(tmp_path / "run"), "--iterations", "2")
    assert trained.returncode == 0, trained.stderr
    assert '"1": "Liver"' in (tmp_path / "run" / "dataset.json").read_text()


def test_bad_input_exits_with_2_and_says_why(files, tmp_path):
    trained = run("slicer_train.py", "--labeled", *files["labeled"][0], "--classes", "Liver", "--run-dir", str(tmp_path / "run"), "--iterations", "2")
    assert trained.returncode == 2
    assert "has a segment 'Kidney' that is not one of the classes (Liver)" in trained.stderr
    missing = run("slicer_predict.py", "--run-dir", str(tmp_path / "nothing"), "--input", files["unlabeled"][0], "--output-dir", str(tmp_path / "o"))
    assert missing.returncode == 2 and "has no checkpoint" in missing.stderr


# -- every outcome ends with an exit code, also inside Slicer (audit item 4) ------------------------
# Inside Slicer an exception that escapes the script leaves the application running
# forever. Slicer's application object is stood in for (it is Qt): its exit() records
# the code the script asked for; the rest is real (script, MRML, worker process).
SLICER_APP = """
import runpy, sys, types
import slicer
calls = []
slicer.app = types.SimpleNamespace(commandOptions=lambda: types.SimpleNamespace(runPythonAndExit=True), exit=calls.append, processEvents=lambda: None)
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
print("EXIT", calls)
"""


def runInSlicer(script: str, *args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SLICER_APP, str(SCRIPTS / script), "--", *args, *STANDIN], capture_output=True, text=True, timeout=120, env=env)


def test_inside_slicer_every_outcome_asks_the_application_to_exit(files, tmp_path):
    ok = runInSlicer("slicer_train.py", "--labeled", *files["labeled"][0], "--run-dir", str(tmp_path / "run"), "--iterations", "2")
    assert ok.stdout.strip().endswith("EXIT [0]"), ok.stderr
    bad = runInSlicer("slicer_predict.py", "--run-dir", str(tmp_path / "nothing"), "--input", files["unlabeled"][0], "--output-dir", str(tmp_path / "o"))
    assert bad.stdout.strip().endswith("EXIT [2]") and "has no checkpoint" in bad.stderr
    usage = runInSlicer("slicer_train.py", "--no-such-option")
    assert usage.stdout.strip().endswith("EXIT [2]") and "error:" in usage.stderr
    # an unexpected failure (the worker's interpreter cannot start): 1, the message last on stderr
    broken = runInSlicer("slicer_train.py", "--labeled", *files["labeled"][0], "--run-dir", str(tmp_path / "run2"), "--iterations", "2", "--python", str(tmp_path / "no-python"))
    assert broken.stdout.strip().endswith("EXIT [1]")
    assert broken.stderr.strip().splitlines()[-1].startswith("error: WorkerError: Could not start the worker process")


def test_ctrl_c_cancels_and_exits_with_3(files, tmp_path):
    import os
    import signal
    import time

    env = {**os.environ, "SEMISUP_STANDIN_DELAY": "0.05"}
    # A shell's background job (`cmd &`) inherits SIGINT ignored, and Python then installs no
    # KeyboardInterrupt handler: give the script the default disposition a terminal gives it.
    proc = subprocess.Popen([sys.executable, str(SCRIPTS / "slicer_train.py"), "--", "--labeled", *files["labeled"][0], "--run-dir", str(tmp_path / "run"), "--iterations", "100000", *STANDIN],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    progress = tmp_path / "run" / "progress.jsonl"
    deadline = time.monotonic() + 60
    while not (progress.exists() and '"iteration"' in progress.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert "Cancelling" in err and (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


# -- an installed extension: scripts beside the module, not in a checkout (audit item 16) ------------
def test_scripts_work_from_an_installed_extension(files, tmp_path):
    """The layout the module's CMakeLists.txt installs: qt-scripted-modules/{SemiSupUncertainty.py, SemiSupUncertaintyLib, semisup, scripts}."""
    import os
    import re
    import shutil

    repo = SCRIPTS.parent
    cmake = (repo / "SemiSupUncertainty" / "CMakeLists.txt").read_text()
    assert "scripts/slicer_train.py" in cmake and "scripts/slicer_predict.py" in cmake  # installed with the module
    installed = tmp_path / "Extension" / "lib" / "Slicer-5.10" / "qt-scripted-modules"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(repo / "SemiSupUncertainty" / "SemiSupUncertaintyLib", installed / "SemiSupUncertaintyLib", ignore=ignore)
    shutil.copytree(repo / "SemiSupUncertainty" / "semisup", installed / "semisup", ignore=ignore)
    for script in re.findall(r"^\s*scripts/(\S+\.py)$", cmake, flags=re.M):
        (installed / "scripts").mkdir(exist_ok=True)
        shutil.copy(SCRIPTS / script, installed / "scripts" / script)
    marker = installed / "SemiSupUncertaintyLib" / "__init__.py"
    marker.write_text(marker.read_text() + "\nimport sys as _s\nprint('library from the installed extension', file=_s.stderr)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, str(installed / "scripts" / "slicer_train.py"), "--", "--labeled", *files["labeled"][0], "--run-dir", str(tmp_path / "run"), "--iterations", "2", *STANDIN],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "library from the installed extension" in done.stderr
    log = (tmp_path / "run" / "slicer-worker.log").read_text()
    assert "semisup_standin" in log


def test_review_accepts_from_files_and_refuses_an_empty_correction(files, tmp_path):
    labeled = [a for pair in files["labeled"] for a in ("--labeled", *pair)]
    assert run("slicer_train.py", *labeled, "--unlabeled", *files["unlabeled"], "--run-dir", str(tmp_path / "run"), "--iterations", "4").returncode == 0
    assert run("slicer_predict.py", "--run-dir", str(tmp_path / "run"), "--input", *files["unlabeled"], "--output-dir", str(tmp_path / "out")).returncode == 0
    # CT3 corrected by the user: CT1's label map drawn on CT3's grid (same geometry as the helpers build).
    corrected = tmp_path / "CT3_corrected.nrrd"
    image = sitk.ReadImage(files["unlabeled"][0])
    labels = sitk.GetImageFromArray((liverMask() + 2 * kidneyMask()).astype(np.uint8))
    labels.CopyInformation(image)
    sitk.WriteImage(labels, str(corrected))
    empty = tmp_path / "CT4_empty.nrrd"  # an empty correction: refused, named, nothing stored for it
    zeros = sitk.GetImageFromArray(np.zeros_like(liverMask()))
    zeros.CopyInformation(sitk.ReadImage(files["unlabeled"][1]))
    sitk.WriteImage(zeros, str(empty))
    worker = tmp_path / "out" / "worker"
    reviewed = run("slicer_review.py", "--run-dir", str(tmp_path / "run"), "--prediction-dir", str(worker / "outputs"),
                   "--accept", files["unlabeled"][0], str(corrected), "--accept", files["unlabeled"][1], str(empty),
                   "--continue-iterations", "2")
    assert reviewed.returncode == 2 and "volume 'CT4'" in reviewed.stderr and "empty" in reviewed.stderr
    assert "accepted CT3: Dice to the prediction" in reviewed.stdout and "Trained:" not in reviewed.stdout
    assert [e["case"] for e in json.loads((worker / "review.json").read_text())["accepted"]] == ["CT3"]
    assert sorted(p.name for p in (worker / "accepted").iterdir()) == ["CT3_image.nrrd", "CT3_label.nrrd"]
    assert sorted(p.name for p in (tmp_path / "run").parent.iterdir() if (p / "parent.json").exists()) == []  # no child run


def test_plan_then_train_from_files_with_the_real_worker(files, tmp_path):
    """``--plan``: semisup plan on the exported cases, its plan.yaml the run's base; given options win."""
    import os

    import yaml

    labeled = [a for pair in files["labeled"] for a in ("--labeled", *pair)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(SCRIPTS / "slicer_train.py"), "--", *labeled, "--unlabeled", *files["unlabeled"],
                           "--run-dir", str(tmp_path / "run"), "--plan", "--budget-minutes", "5", "--iterations", "2",
                           "--device", "cpu", "--set", "train.val_every=2"], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    plan = yaml.safe_load((tmp_path / "run" / "plan.yaml").read_text())
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["train"]["iterations"] == 2 and plan["train"]["iterations"] != 2  # the option wins
    for section, key in (("data", "spatial_dims"), ("data", "patch_size"), ("data", "target_spacing"), ("network", "name"), ("method", "name")):
        assert config[section][key] == plan[section][key], (section, key)
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
