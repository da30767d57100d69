"""Fault injection: bad inputs and faults a new user meets, each refused clearly or handled
without losing anything (issue 16; the guarantees are listed in docs/guarantees.md).

One tiny run is trained once through the real CLI (module fixture); the tests copy it
where they change it. CLI behaviour is checked through ``semisup.cli.main`` in this
process (exit code, one-line message) where that is enough, and in real
``python -m semisup`` subprocesses where the process is the point (signals, a full
disk, file permissions): each subprocess costs seconds of imports on a loaded machine.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml

from semisup.cli import main as cli_main
from semisup.config import ConfigError, DataConfig, InferenceConfig, MethodConfig, NetworkConfig, RunConfig, TrainConfig, load_config, save_config
from semisup.data import DataError, DatasetSpec, check_dataset, read_image
from semisup.data.synthetic import make_synthetic_dataset
from semisup.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from semisup.engine.predict import PROVENANCE_KEY, load_trained, predict_files
from semisup.engine.trainer import Trainer
from semisup.measure.evaluate import evaluate_predictions
from semisup.methods import build_method

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "SemiSupUncertainty"), "OMP_NUM_THREADS": "1"}
TRAINED_ITERATIONS = 4

pytestmark = pytest.mark.slow


# -- shared material ---------------------------------------------------------------
def tiny_config(dataset: Path, method: str = "supervised", iterations: int = TRAINED_ITERATIONS, **train) -> RunConfig:
    params = {"iterations_per_epoch": 1, "consistency_rampup": 1.0, "mc_samples": 1} if method in ("uamt", "mean_teacher") else {}
    settings = dict(iterations=iterations, labeled_batch=1, unlabeled_batch=1, lr=0.01, lr_step=10_000, val_every=2, checkpoint_every=2, log_every=1)
    settings.update(train)
    return RunConfig(
        data=DataConfig(dataset=str(dataset), patch_size=[32, 32, 16], augment=False),
        network=NetworkConfig(name="vnet", base_filters=4),
        method=MethodConfig(name=method, params=params),
        train=TrainConfig(**settings),
        inference=InferenceConfig(mc_samples=1, overlap=0.0),
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults_data")
    return make_synthetic_dataset(root, labeled=2, unlabeled=1, validation=1, test=2, shape=(32, 32, 16), seed=5, difficulty=0.1)


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory) -> Path:
    """A finished tiny run, trained by a real ``python -m semisup train`` (umask 022)."""
    run = tmp_path_factory.mktemp("faults_run") / "run"
    run.mkdir()
    save_config(tiny_config(dataset), run / "config.yaml")
    proc = _spawn("train", "--run-dir", str(run), "--progress", "json", preexec_fn=lambda: os.umask(0o022))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert _events(out)[-1]["event"] == "done"
    return run


@pytest.fixture()
def run_copy(trained, tmp_path) -> Path:
    """A copy of the trained run that a test may change."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


def _spawn(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "semisup", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, **kw
    )


def _events(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def cli(capsys, *argv: str) -> tuple[int, list[dict], str]:
    """``semisup ARGV`` in this process: (exit code, JSON events on stdout, stderr)."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = cli_main([*argv, "--progress", "json"])
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    captured = capsys.readouterr()
    return code, _events(captured.out), captured.err


def assert_refused(code: int, events: list[dict], err: str, *words: str, exit_code: int = 2) -> str:
    """Exit ``exit_code`` with one error event whose message holds every word, no traceback."""
    assert code == exit_code, (code, err)
    assert "Traceback" not in err, err
    message = events[-1]["message"] if events and events[-1]["event"] == "error" else err
    for word in words:
        assert word in message, (word, message)
    return message


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def write_label(path: Path, values: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> Path:
    img = sitk.GetImageFromArray(values)
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))
    return path


# -- 1. a finished run needs --resume or a new folder ---------------------------------
def test_train_into_a_trained_run_without_resume_is_refused(run_copy, capsys):
    before = snapshot(run_copy)
    code, events, err = cli(capsys, "train", "--run-dir", str(run_copy))
    assert_refused(code, events, err, "last.pt", "--resume", "new --run-dir")
    assert snapshot(run_copy) == before  # best.pt, progress.jsonl, config.yaml untouched


# -- 2. predict never replaces what it did not write ----------------------------------
def test_predict_refuses_to_replace_ground_truth(trained, dataset, tmp_path, capsys):
    spec = DatasetSpec.from_json(dataset)
    case = spec.test[0]
    out = tmp_path / "out"
    out.mkdir()
    truth = out / f"{case.name}_label.nrrd"
    shutil.copy(case.label, truth)
    before = snapshot(out)
    code, events, err = cli(capsys, "predict", "--run-dir", str(trained), "--input", str(case.image), "--output-dir", str(out))
    assert_refused(code, events, err, str(truth), "not written by semisup predict")
    assert snapshot(out) == before  # nothing written, the ground truth intact


def test_predict_refuses_two_inputs_with_one_case_name(trained, dataset, tmp_path, capsys):
    image = DatasetSpec.from_json(dataset).test[0].image
    (tmp_path / "a").mkdir()
    first = Path(shutil.copy(image, tmp_path / "a" / "x.nrrd"))
    second = tmp_path / "x.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(image)), str(second))
    out = tmp_path / "out"
    code, events, err = cli(capsys, "predict", "--run-dir", str(trained), "--input", str(first), str(second), "--output-dir", str(out))
    assert_refused(code, events, err, "'x'", str(first), str(second))
    assert not out.exists() or not any(out.iterdir())


def test_predict_outputs_carry_provenance_and_may_be_replaced_by_predict(trained, dataset, tmp_path):
    model = load_trained(trained / "checkpoints" / "best.pt")
    image = DatasetSpec.from_json(dataset).test[0].image
    rows = predict_files(model, [image], tmp_path / "out")
    reader = sitk.ImageFileReader()
    reader.SetFileName(rows[0]["label"])
    reader.ReadImageInformation()
    assert reader.GetMetaData(PROVENANCE_KEY).startswith("semisup ")
    predict_files(model, [image], tmp_path / "out")  # its own outputs: replaced without complaint


# -- 3. one writer per run folder ----------------------------------------------------------
def _fresh_run(dataset: Path, folder: Path, iterations: int = 2, **train) -> Path:
    folder.mkdir(parents=True)
    save_config(tiny_config(dataset, iterations=iterations, **train), folder / "config.yaml")
    return folder


def test_a_live_lock_refuses_a_second_training(dataset, tmp_path, capsys):
    run = _fresh_run(dataset, tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        (run / "train.lock").write_text(json.dumps({"pid": holder.pid, "hostname": socket.gethostname(), "started": time.time(), "token": "x"}))
        code, events, err = cli(capsys, "train", "--run-dir", str(run))
        assert_refused(code, events, err, "train.lock", f"process {holder.pid}")
        assert not (run / "checkpoints").exists() and not (run / "progress.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()


def test_two_trainings_at_once_the_second_is_refused(dataset, tmp_path, capsys):
    run = _fresh_run(dataset, tmp_path / "run", iterations=100_000, checkpoint_every=1_000_000, val_every=1_000_000)
    proc = _spawn("train", "--run-dir", str(run), "--progress", "json")
    try:
        deadline = time.time() + 120
        while not ((run / "progress.jsonl").exists() and '"start"' in (run / "progress.jsonl").read_text()):
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
            time.sleep(0.2)
        holder = json.loads((run / "train.lock").read_text())
        assert holder["pid"] == proc.pid
        for extra in ([], ["--resume"]):
            code, events, err = cli(capsys, "train", "--run-dir", str(run), *extra)
            assert_refused(code, events, err, f"process {proc.pid}")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    progress = _events((run / "progress.jsonl").read_text())
    assert [e["event"] for e in progress if e["event"] in ("start", "error", "cancelled")] == ["start", "cancelled"]  # nothing mixed in
    assert not (run / "train.lock").exists()  # released on the way out


def test_a_stale_lock_of_a_dead_process_is_taken_over(dataset, tmp_path, capsys):
    run = _fresh_run(dataset, tmp_path / "run")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    import socket

    (run / "train.lock").write_text(json.dumps({"pid": gone.pid, "hostname": socket.gethostname(), "started": time.time() - 5, "token": "x"}))
    code, events, err = cli(capsys, "train", "--run-dir", str(run))
    assert code == 0, err
    assert events[-1]["event"] == "done"
    assert not (run / "train.lock").exists()  # released at the end


def test_a_lock_left_by_an_earlier_process_with_this_pid_is_taken_over(tmp_path):
    import socket

    from semisup.engine.runfolder import LOCK_NAME, acquire_run_lock

    lock_file = tmp_path / LOCK_NAME  # same pid and host, but written long before this process started
    lock_file.write_text(json.dumps({"pid": os.getpid(), "hostname": socket.gethostname(), "started": 1.0e9, "token": "old"}))
    lock = acquire_run_lock(tmp_path)
    assert json.loads(lock_file.read_text())["token"] != "old"
    lock.release()
    assert not lock_file.exists()


# -- 4. evaluate refuses what is not a label map of the declared classes ------------------
@pytest.fixture()
def eval_case(tmp_path):
    """A 2-class dataset.json with one test case, and a predictions folder."""
    ref = np.zeros((8, 8, 8), np.uint8)
    ref[2:6, 2:6, 2:6] = 1
    (tmp_path / "ref").mkdir()
    (tmp_path / "pred").mkdir()
    image = write_label(tmp_path / "ref" / "c.nrrd", ref.astype(np.float32))
    train_image = write_label(tmp_path / "ref" / "t.nrrd", ref.astype(np.float32))
    write_label(tmp_path / "pred" / "c_label.nrrd", 1 - ref)  # completely wrong

    def dataset_with(label: np.ndarray) -> Path:
        path = write_label(tmp_path / "ref" / "c_seg.nrrd", label)
        (tmp_path / "dataset.json").write_text(json.dumps({
            "labels": {"0": "background", "1": "organ"},
            "training": [{"image": str(train_image), "label": str(path)}],
            "test": [{"image": str(image), "label": str(path)}],
        }))
        return tmp_path / "dataset.json"

    return ref, tmp_path, dataset_with


def test_evaluate_refuses_a_0_255_reference(eval_case, capsys):
    ref, root, dataset_with = eval_case
    dataset = dataset_with(ref * 255)
    code, events, err = cli(capsys, "evaluate", "--predictions", str(root / "pred"), "--dataset", str(dataset), "--split", "test")
    assert_refused(code, events, err, "c_seg.nrrd", "255", "0..1")
    assert not (root / "pred" / "metrics.csv").exists()


def test_evaluate_refuses_fractional_reference_values(eval_case, capsys):
    ref, root, dataset_with = eval_case
    dataset = dataset_with(ref.astype(np.float32) * 0.5)
    code, events, err = cli(capsys, "evaluate", "--predictions", str(root / "pred"), "--dataset", str(dataset), "--split", "test")
    assert_refused(code, events, err, "c_seg.nrrd", "0.5")


def test_evaluate_labels_folder_needs_consecutive_classes_and_skips_other_files(eval_case, tmp_path, capsys):
    ref, root, _ = eval_case
    labels = tmp_path / "labels"
    labels.mkdir()
    write_label(labels / "c.nrrd", ref * 255)
    (labels / "README.txt").write_text("reference labels, drawn by hand\n")
    code, events, err = cli(capsys, "evaluate", "--predictions", str(root / "pred"), "--labels", str(labels))
    assert_refused(code, events, err, "255", "not consecutive", "--classes")
    code, events, err = cli(capsys, "evaluate", "--predictions", str(root / "pred"), "--labels", str(labels), "--classes", "background", "organ")
    assert_refused(code, events, err, "c.nrrd", "255", "declared classes 0..1 (background, organ)")
    write_label(labels / "c.nrrd", ref)  # a proper 0/1 map; README.txt is no case
    code, events, err = cli(capsys, "evaluate", "--predictions", str(root / "pred"), "--labels", str(labels))
    assert code == 0, err
    scores = json.loads((root / "pred" / "metrics.json").read_text())
    assert [c["case"] for c in scores["cases"]] == ["c"]
    assert scores["cases"][0]["classes"]["class_1"]["dice"] == pytest.approx(0.0)  # the wrong prediction scores 0


# -- 5. semi-supervised methods need unlabeled data; labels need foreground ----------------
def test_semi_supervised_without_unlabeled_images_is_refused(dataset, tmp_path):
    raw = json.loads(dataset.read_text())
    raw["unlabeled"] = []
    no_unlabeled = dataset.parent / "no_unlabeled.json"
    no_unlabeled.write_text(json.dumps(raw))
    with pytest.raises(DataError, match="'unlabeled' is empty"):
        Trainer(tiny_config(no_unlabeled, method="uamt", iterations=1), tmp_path / "a").fit()
    with pytest.raises(ConfigError, match="train.unlabeled_batch is 0"):
        Trainer(tiny_config(dataset, method="uamt", iterations=1, unlabeled_batch=0), tmp_path / "b").fit()
    assert not (tmp_path / "a" / "checkpoints").exists() and not (tmp_path / "a" / "config.yaml").exists()


def test_uamt_refuses_zero_mc_samples(dataset):
    cfg = tiny_config(dataset, method="uamt")
    cfg.method.params["mc_samples"] = 0
    with pytest.raises(ConfigError, match="mc_samples must be >= 1"):
        build_method(cfg, 2)


def test_all_background_labels_are_refused(dataset, tmp_path):
    root = Path(shutil.copytree(dataset.parent, tmp_path / "empty"))
    spec = DatasetSpec.from_json(root / dataset.name)
    for case in [*spec.training, *spec.validation]:
        img = sitk.ReadImage(str(case.label))
        blank = sitk.GetImageFromArray(np.zeros_like(sitk.GetArrayFromImage(img)))
        blank.CopyInformation(img)
        sitk.WriteImage(blank, str(case.label))
    with pytest.raises(DataError, match="every training label is all background"):
        check_dataset(spec, 3)


# -- 6. resume: safe overrides apply, the others are refused; a moved dataset resumes -------
def test_resume_refuses_overrides_it_cannot_apply(run_copy, capsys):
    before = snapshot(run_copy)
    code, events, err = cli(capsys, "train", "--run-dir", str(run_copy), "--resume", "--set", "train.lr=0.5")
    assert_refused(code, events, err, "train.lr", "0.01", "0.5", "new run folder")
    assert snapshot(run_copy) == before  # its logs too: the finished run still reads as finished


def test_resume_a_moved_dataset_given_relative_to_the_working_directory(run_copy, dataset, tmp_path, capsys, monkeypatch):
    moved = tmp_path / "elsewhere" / "data"
    shutil.copytree(dataset.parent, moved)
    config = yaml.safe_load((run_copy / "config.yaml").read_text())
    config["data"]["dataset"] = str(tmp_path / "gone" / "dataset.json")  # where it used to be
    (run_copy / "config.yaml").write_text(yaml.safe_dump(config))
    stale = run_copy / "checkpoints" / ".last.pt.12345.deadbeef.tmp"  # left by a killed write
    stale.write_bytes(b"half a checkpoint")
    monkeypatch.chdir(tmp_path / "elsewhere")
    code, events, err = cli(
        capsys, "train", "--run-dir", str(run_copy), "--resume",
        "--set", f"data.dataset=data/{dataset.name}", "--set", f"train.iterations={TRAINED_ITERATIONS + 2}",
    )
    assert code == 0, err
    start = next(e for e in events if e["event"] == "start")
    assert start["start_iteration"] == TRAINED_ITERATIONS and events[-1]["iteration"] == TRAINED_ITERATIONS + 2
    saved = yaml.safe_load((run_copy / "config.yaml").read_text())
    assert saved["data"]["dataset"] == str(moved / dataset.name)
    assert not stale.exists()  # item 10: cleaned at the next start


# -- 7. typed configuration and ranges ----------------------------------------------------
def test_set_values_take_the_field_type(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {dataset: d.json}\n")
    cfg = load_config(path, {"train.lr": "1e-3", "method.name": "uamt", "method.params.consistency": "1e-1"})
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == 1e-3
    assert build_method(cfg, 2).params.consistency == 0.1
    with pytest.raises(ConfigError, match=r"train.iterations: expected a whole number, got 10.5"):
        load_config(path, {"train.iterations": "10.5"})


@pytest.mark.parametrize(
    "key,value",
    [("train.val_every", "0"), ("train.checkpoint_every", "0"), ("train.log_every", "0"), ("train.lr", "-1"), ("data.num_workers", "-1")],
)
def test_out_of_range_settings_are_refused(tmp_path, key, value):
    path = tmp_path / "c.yaml"
    path.write_text("data: {dataset: d.json}\n")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(path, {key: value})


def test_a_batch_norm_with_one_value_per_channel_is_refused_naming_patch_and_batch(dataset, tmp_path, capsys):
    # 16 x 16 x 16 leaves 1 voxel at the V-Net's deepest level; supervised forwards the labeled batch of 1 alone.
    cfg = tiny_config(dataset)
    cfg.data.patch_size = [16, 16, 16]
    run = tmp_path / "run"
    run.mkdir()
    save_config(cfg, run / "config.yaml")
    code, events, err = cli(capsys, "train", "--run-dir", str(run))
    message = assert_refused(code, events, err, "[16, 16, 16]", "BatchNorm", "batches of 2")
    assert "Expected more than 1 value" not in message


def test_predict_refuses_zero_mc_samples(trained, dataset, tmp_path, capsys):
    image = DatasetSpec.from_json(dataset).test[0].image
    code, events, err = cli(capsys, "predict", "--run-dir", str(trained), "--input", str(image), "--output-dir", str(tmp_path / "o"), "--mc-samples", "0")
    assert_refused(code, events, err, "--mc-samples", "0")


# -- 8. checkpoint integrity ---------------------------------------------------------------
def test_checkpoint_with_a_changed_tensor_is_refused(trained, tmp_path):
    state = torch.load(trained / "checkpoints" / "best.pt", weights_only=True)
    key = next(k for k, v in state["method"].items() if v.is_floating_point() and v.numel() > 1)
    state["method"][key].view(-1)[0] += 1.0  # a flipped bit, as a copy or disk error makes
    torch.save(state, tmp_path / "flipped.pt")
    with pytest.raises(CheckpointError, match="flipped.pt: checksum mismatch"):
        load_checkpoint(tmp_path / "flipped.pt")


def test_checkpoint_with_nan_weights_is_refused(trained, tmp_path):
    state = load_checkpoint(trained / "checkpoints" / "best.pt")
    key = next(k for k, v in state["method"].items() if v.is_floating_point())
    state["method"][key].view(-1)[0] = float("nan")
    save_checkpoint({k: v for k, v in state.items() if k not in ("format", "version")}, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=f"nan.pt: weights method/{key} hold NaN"):
        load_checkpoint(tmp_path / "nan.pt")


class Payload:
    """Any pickled object beyond plain data."""


def test_unsafe_checkpoint_refusal_does_not_suggest_unsafe_loading(tmp_path):
    torch.save({"format": "semisup-checkpoint/1", "obj": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "evil.pt")
    assert "evil.pt: refused to load" in str(info.value) and "Payload" in str(info.value)
    assert "weights_only" not in str(info.value)


# -- 9. orientation --------------------------------------------------------------------------
def test_predict_warns_when_axes_differ_from_the_training_images(trained, dataset, tmp_path):
    assert load_checkpoint(trained / "checkpoints" / "best.pt")["orientations"] == ["LPS"]
    img = read_image(DatasetSpec.from_json(dataset).test[0].image)
    permuted = sitk.PermuteAxes(img, [1, 0, 2])  # the same voxels with x and y swapped in the array
    permuted.SetDirection((0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    path = tmp_path / "permuted.nrrd"
    sitk.WriteImage(permuted, str(path))
    events = []
    predict_files(load_trained(trained / "checkpoints" / "best.pt"), [path], tmp_path / "out", emit=lambda e, **f: events.append({"event": e, **f}))
    warnings = [e["message"] for e in events if e["event"] == "warning"]
    # The size check may also warn about this tiny model's segmentation; the orientation warning comes once.
    axes = [m for m in warnings if "check this segmentation" not in m]
    assert len(axes) == 1 and "permuted.nrrd" in axes[0] and "oriented PLS" in axes[0]


# -- 10. signals while starting, unwritable folders, a full disk ------------------------------
def test_a_signal_during_startup_is_a_cancel(dataset, tmp_path):
    run = _fresh_run(dataset, tmp_path / "run", iterations=100_000)  # never done before the signal
    proc = _spawn("train", "--run-dir", str(run), "--progress", "json")
    time.sleep(1.0)  # still importing torch, or checking the data
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    assert "Traceback" not in err
    assert _events(out)[-1]["event"] == "cancelled"


def test_an_unwritable_run_folder_is_a_one_line_error(trained, dataset, tmp_path, capsys):
    run = _fresh_run(dataset, tmp_path / "run")
    (run / "checkpoints").write_text("a file where the checkpoint folder belongs")
    code, events, err = cli(capsys, "train", "--run-dir", str(run))
    assert_refused(code, events, err, str(run / "checkpoints"))
    if os.geteuid() != 0:  # root writes anywhere: a read-only folder only binds other users
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        code, events, err = cli(capsys, "predict", "--run-dir", str(trained), "--input", str(DatasetSpec.from_json(dataset).test[0].image), "--output-dir", str(ro / "p"))
        assert_refused(code, events, err, str(ro / "p"))
        ro_run = _fresh_run(dataset, tmp_path / "ro_run")
        ro_run.chmod(0o555)
        try:
            code, events, err = cli(capsys, "train", "--run-dir", str(ro_run))
            assert_refused(code, events, err, str(ro_run))
        finally:
            ro_run.chmod(0o755)


def test_a_full_disk_is_a_one_line_error_and_leaves_no_temporaries(dataset, tmp_path):
    run = _fresh_run(dataset, tmp_path / "run")
    limit = 256 * 1024  # bytes a file may grow to: enough for the logs and cache, not a checkpoint

    def small_disk() -> None:  # RLIMIT_FSIZE: writes past the limit fail with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = _spawn("train", "--run-dir", str(run), "--progress", "json", preexec_fn=small_disk)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    message = _events(out)[-1]["message"]
    assert str(run / "checkpoints") in message and "too large" in message.lower(), message
    assert not list((run / "checkpoints").glob("*.tmp")) and not list((run / "checkpoints").glob(".*.tmp"))


# -- 11. predict reads headers first; one bad input does not cost the others ---------------
def test_predict_refuses_a_huge_volume_from_its_header(trained, tmp_path, capsys):
    header = tmp_path / "huge.nhdr"  # 830^3 voxels declared, no voxel data at all
    header.write_text(
        "NRRD0004\ntype: float\ndimension: 3\nspace: left-posterior-superior\nsizes: 830 830 830\n"
        "space directions: (1,0,0) (0,1,0) (0,0,1)\nencoding: raw\nendian: little\ndata file: huge.raw\n\n"
    )
    (tmp_path / "huge.raw").write_bytes(b"")
    code, events, err = cli(capsys, "predict", "--run-dir", str(trained), "--input", str(header), "--output-dir", str(tmp_path / "o"))
    assert_refused(code, events, err, "huge.nhdr", "GiB", "830x830x830")


def test_one_bad_input_among_many_keeps_the_others(trained, dataset, tmp_path, capsys):
    spec = DatasetSpec.from_json(dataset)
    bad = tmp_path / "broken.nrrd"
    bad.write_text("not an image")
    out = tmp_path / "out"
    code, events, err = cli(capsys, "predict", "--run-dir", str(trained), "--input", str(spec.test[0].image), str(bad), str(spec.test[1].image), "--output-dir", str(out))
    assert_refused(code, events, err, "broken.nrrd", "other inputs' outputs are written")
    rows = (out / "scores.csv").read_text().splitlines()
    assert len(rows) == 3 and {r.split(",")[0] for r in rows[1:]} == {spec.test[0].name, spec.test[1].name}
    assert (out / f"{spec.test[1].name}_label.nrrd").exists()


# -- 12. smaller ones ------------------------------------------------------------------------
def test_dataset_json_with_a_key_twice_is_refused(tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text('{"labels": {"0": "background", "1": "atrium", "1": "ventricle"}, "training": []}')
    with pytest.raises(DataError, match="key '1' appears twice"):
        DatasetSpec.from_json(path, check_files=False)


def test_train_log_is_written_and_checkpoints_follow_the_umask(trained):
    log = (trained / "train.log").read_text()
    assert "start: supervised" in log and f"iteration {TRAINED_ITERATIONS}/{TRAINED_ITERATIONS}" in log and "done at iteration" in log
    for name in ("best.pt", "last.pt"):
        assert (trained / "checkpoints" / name).stat().st_mode & 0o777 == 0o644  # umask 022, not mkstemp's 0600
    assert not (trained / "train.lock").exists()


def test_relative_set_dataset_is_resolved_against_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    path = tmp_path / "configs" / "c.yaml"
    path.write_text("data: {dataset: ../d/dataset.json}\n")
    assert load_config(path).data.dataset == str(tmp_path / "d" / "dataset.json")  # in the file: its folder
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    assert load_config(path, {"data.dataset": "mine/dataset.json"}).data.dataset == str(tmp_path / "work" / "mine" / "dataset.json")
