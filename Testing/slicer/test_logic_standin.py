"""The shared logic with real subprocesses: a stand-in worker that speaks docs/worker-protocol.md.

The stand-in (standin/semisup_standin) reads the exported config.yaml and dataset.json
with the same libraries as the core library, emits the protocol's events, writes
checkpoints atomically, stops on SIGTERM with exit code 3 and resumes from last.pt.
The same flows run against the real ``python -m semisup`` in test_real_core.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import psutil
import pytest
import yaml

from mrml_helpers import makeLogic, obliqueVolume
from SemiSupUncertaintyLib import ExitStatus, InputError, RunInfo, WorkerError
from SemiSupUncertaintyLib.MRMLIO import sameGeometry


def pollUntil(job, condition, timeout: float = 30.0) -> None:
    """What the widget's QTimer does: poll the job until ``condition(job)``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        job.poll()
        if condition(job):
            return
        time.sleep(0.02)
    raise AssertionError(f"condition not reached in {timeout} s; status {job.status}, {job.tracker.status_text()}")


def assertNoProcessLeft(pids, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    alive = list(pids)
    while time.monotonic() < end:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return
        time.sleep(0.05)
    raise AssertionError(f"processes left behind: {alive}")


def test_blocking_training_exports_trains_and_charts(standinLogic, threeCases):
    pairs, unlabeled = threeCases
    events = []
    result = standinLogic.train(pairs, unlabeled, iterations=12, valEvery=4, checkpointEvery=4, validationFraction=0.5, chart=False, onEvent=events.append)
    assert result.status == ExitStatus.FINISHED and result.iteration == 12 and result.iterations == 12
    assert Path(result.bestCheckpoint).is_file() and Path(result.lastCheckpoint).is_file()
    run = result.runDir
    assert run.parent == standinLogic.runsDirectory
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["data"]["dataset"] == "dataset.json" and config["train"]["iterations"] == 12
    assert config["data"]["patch_size"] == [16, 16, 16]  # automatic: fits the 24 x 20 x 16 volumes
    dataset = json.loads((run / "dataset.json").read_text())
    assert len(dataset["training"]) == 1 and len(dataset["validation"]) == 1 and len(dataset["unlabeled"]) == 1
    kinds = [e.name for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("iteration") == 12 and "validation" in kinds
    assert "[stderr] stand-in worker starting" in (run / "slicer-worker.log").read_text()
    # The run folder's record of the run tells the same story.
    info = RunInfo.read(run)
    assert info.state == "finished" and info.can_predict and not info.can_resume and info.class_names == ["Liver", "Kidney"]


def test_non_blocking_training_polled_like_the_gui_with_live_chart(standinLogic, threeCases):
    pairs, unlabeled = threeCases
    from SemiSupUncertaintyLib.Protocols import JobProtocol

    job = standinLogic.train(pairs, unlabeled, iterations=20, valEvery=5, checkpointEvery=5, validationFraction=0.5, wait=False, chart=True)
    assert job.isRunning() and isinstance(job, JobProtocol)
    pollUntil(job, lambda j: j.finished)
    assert job.status == ExitStatus.FINISHED and job.result.bestDice is not None
    lossRows, diceRows = job.chart.rows()
    assert lossRows == 20 and diceRows == 4
    chart = job.chart.chartNode
    assert chart.GetNumberOfPlotSeriesNodes() == 4  # Dice, loss, supervised, consistency
    assert job.tracker.fraction() == 1.0 and job.tracker.status_text().startswith("Finished")


def test_worker_failure_reaches_the_user_in_plain_words(scene, tmp_path, threeCases):
    pairs, unlabeled = threeCases
    logic = makeLogic(scene, tmp_path, env={"SEMISUP_STANDIN_FAIL_AT": "3"})
    with pytest.raises(WorkerError) as info:
        logic.train(pairs, unlabeled, iterations=10)
    assert info.value.status == ExitStatus.FAILED and info.value.returncode == 1
    assert str(info.value) == "stand-in failure at iteration 3: CUDA out of memory"
    job = logic.train(pairs, unlabeled, iterations=10, wait=False)
    pollUntil(job, lambda j: j.finished)
    assert job.status == ExitStatus.FAILED and "CUDA out of memory" in job.errorMessage and "Failed:" in job.tracker.status_text()


def test_a_plan_process_that_writes_no_plan_is_a_failure_not_a_plan(standinLogic, threeCases):
    pairs, unlabeled = threeCases
    with pytest.raises(WorkerError, match="wrote no .*plan.yaml") as info:
        standinLogic.plan(pairs, unlabeled, standinLogic.runsDirectory / "p")
    assert info.value.status == ExitStatus.FAILED
    assert (standinLogic.runsDirectory / "p" / "imagesTr").is_dir()  # kept for the diagnosis


def test_planning_into_a_trained_run_is_refused(standinLogic, threeCases):
    pairs, unlabeled = threeCases
    trained = standinLogic.train(pairs, unlabeled, iterations=2)
    with pytest.raises(InputError, match="already holds a trained run"):
        standinLogic.plan(pairs, unlabeled, trained.runDir)


def test_bad_input_found_by_the_worker_is_exit_code_2(standinLogic, threeCases):
    pairs, unlabeled = threeCases
    with pytest.raises(WorkerError) as info:
        standinLogic.train(pairs, unlabeled, iterations=5, overrides={"data.dataset": "elsewhere.json"})
    assert info.value.status == ExitStatus.BAD_INPUT and "dataset file not found" in str(info.value)


def test_settings_are_checked_before_any_process_starts(standinLogic, threeCases, tmp_path):
    pairs, unlabeled = threeCases
    with pytest.raises(InputError, match="unknown setting 'train.iteratons'"):
        standinLogic.train(pairs, unlabeled, iterations=5, overrides={"train.iteratons": 5})
    with pytest.raises(InputError, match="iterations must be at least 1"):
        standinLogic.train(pairs, unlabeled, iterations=0)
    with pytest.raises(TypeError):
        standinLogic.train(pairs, unlabeled, iteration=5)  # a misspelt setting is not silently ignored


def test_cancel_stops_within_seconds_and_leaves_no_process(scene, tmp_path, threeCases):
    pairs, unlabeled = threeCases
    logic = makeLogic(scene, tmp_path, env={"SEMISUP_STANDIN_DELAY": "0.05"})
    job = logic.train(pairs, unlabeled, iterations=10000, checkpointEvery=1000, wait=False)
    pollUntil(job, lambda j: j.tracker.iteration >= 3)
    pids = job.worker.descendantPids()
    t0 = time.monotonic()
    job.cancel(gracePeriod=10)
    pollUntil(job, lambda j: j.finished, timeout=15)
    assert time.monotonic() - t0 < 5
    assert job.status == ExitStatus.CANCELLED and job.worker.returncode == 3 and not job.worker.killed
    assert "resume" in job.errorMessage
    assertNoProcessLeft(pids)
    last = json.loads((job.runDir / "checkpoints" / "last.pt").read_text())
    assert last["iteration"] == job.tracker.iteration  # written on the way out
    assert RunInfo.read(job.runDir).state == "interrupted" and RunInfo.read(job.runDir).can_resume


def test_cancel_without_a_signal_stops_gracefully_through_the_cancel_file(scene, tmp_path, threeCases):
    """Windows from Slicer's GUI: CTRL_BREAK cannot be delivered (no shared console); the run still stops with a checkpoint."""
    from SemiSupUncertaintyLib.WorkerProcess import WorkerProcess

    class NoSignals(WorkerProcess):
        def _signalStop(self):
            raise OSError("GenerateConsoleCtrlEvent: the handle is invalid")

    pairs, unlabeled = threeCases
    logic = makeLogic(scene, tmp_path, env={"SEMISUP_STANDIN_DELAY": "0.05"})
    job = logic.train(pairs, unlabeled, iterations=10000, checkpointEvery=1000, wait=False)
    job.worker.__class__ = NoSignals
    pollUntil(job, lambda j: j.tracker.iteration >= 3)
    job.cancel(gracePeriod=10)
    assert (job.runDir / "cancel.request").is_file()
    pollUntil(job, lambda j: j.finished, timeout=15)
    assert job.status == ExitStatus.CANCELLED and job.worker.returncode == 3 and not job.worker.killed
    last = json.loads((job.runDir / "checkpoints" / "last.pt").read_text())
    assert last["iteration"] == job.tracker.iteration and not (job.runDir / "cancel.request").exists()


def test_cancel_kills_the_process_tree_when_the_worker_does_not_answer(scene, tmp_path, threeCases):
    pairs, unlabeled = threeCases
    logic = makeLogic(scene, tmp_path, env={"SEMISUP_STANDIN_DELAY": "0.05", "SEMISUP_STANDIN_IGNORE_SIGTERM": "1", "SEMISUP_STANDIN_SPAWN_CHILD": "1"})
    job = logic.train(pairs, unlabeled, iterations=10000, wait=False)
    pollUntil(job, lambda j: j.tracker.iteration >= 2)
    child = int((job.runDir / "child.pid").read_text())
    pids = job.worker.descendantPids()
    assert child in pids
    t0 = time.monotonic()
    job.cancel(gracePeriod=1.0)
    pollUntil(job, lambda j: j.finished, timeout=15)
    assert time.monotonic() - t0 < 5
    assert job.status == ExitStatus.CANCELLED and job.worker.killed and "did not stop in time" in job.errorMessage
    assertNoProcessLeft(pids)


def test_a_killed_run_resumes_from_its_last_checkpoint(scene, tmp_path, threeCases):
    pairs, unlabeled = threeCases
    logic = makeLogic(scene, tmp_path, env={"SEMISUP_STANDIN_DELAY": "0.03"})
    job = logic.train(pairs, unlabeled, iterations=40, checkpointEvery=5, wait=False, chart=True)
    pollUntil(job, lambda j: j.tracker.last_checkpoint and j.tracker.iteration >= 12)
    job.kill()  # a crash: SIGKILL to the whole tree, no goodbye
    pollUntil(job, lambda j: j.finished)
    assert job.status == ExitStatus.KILLED
    saved = json.loads((job.runDir / "checkpoints" / "last.pt").read_text())["iteration"]
    info = RunInfo.read(job.runDir)
    assert info.state == "running-or-interrupted" and info.can_resume
    starts = []
    result = logic.resume(job.runDir, chart=True, onEvent=lambda e: starts.append(e) if e.name == "start" else None)
    assert result.status == ExitStatus.FINISHED and result.iteration == 40
    assert starts[0].start_iteration == saved
    log = [json.loads(line) for line in (job.runDir / "progress.jsonl").read_text().splitlines()]
    assert [e["start_iteration"] for e in log if e["event"] == "start"] == [0, saved]


def test_resume_rules(scene, tmp_path, threeCases):
    pairs, unlabeled = threeCases
    logic = makeLogic(scene, tmp_path, env={"SEMISUP_STANDIN_DELAY": "0.05"})
    job = logic.train(pairs, unlabeled, iterations=10000, wait=False)
    pollUntil(job, lambda j: j.tracker.iteration >= 1)
    with pytest.raises(InputError, match="is being trained right now"):
        logic.resume(job.runDir)
    job.cancel()
    pollUntil(job, lambda j: j.finished)
    done = logic.resume(job.runDir, overrides={"train.iterations": job.tracker.iteration + 3})
    assert done.status == ExitStatus.FINISHED and done.iteration == job.tracker.iteration + 3
    assert yaml.safe_load((job.runDir / "config.yaml").read_text())["train"]["iterations"] == done.iteration
    with pytest.raises(InputError, match="has finished training"):
        logic.resume(job.runDir)
    with pytest.raises(InputError, match="already holds a trained run"):
        logic.train(pairs, unlabeled, runDir=job.runDir, iterations=5)
    with pytest.raises(InputError, match="not a run folder"):
        logic.resume(tmp_path / "nothing")


def test_prediction_loads_segmentations_uncertainty_and_ranking(standinLogic, threeCases):
    import slicer

    pairs, unlabeled = threeCases
    trained = standinLogic.train(pairs, unlabeled, iterations=3)
    composite = standinLogic.scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    other = obliqueVolume(standinLogic.scene, "CT 4 (follow-up)", seed=4, shape=(20, 18, 12))
    volumes = [unlabeled[0], other]
    result = standinLogic.predict(trained.runDir, volumes, mcSamples=4)
    assert [s.GetName() for s in result.segmentations] == ["CT3 segmentation", "CT 4 (follow-up) segmentation"]
    assert [u.GetName() for u in result.uncertainties] == ["CT3 uncertainty", "CT 4 (follow-up) uncertainty"]
    for volume, seg, unc in zip(volumes, result.segmentations, result.uncertainties):
        segmentation = seg.GetSegmentation()
        assert [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())] == ["Liver", "Kidney"]
        assert seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole()) is volume
        assert sameGeometry(unc, volume)
        assert seg.GetAttribute("SemiSupUncertainty.SourceVolumeID") == volume.GetID()
        assert slicer.util.arrayFromVolume(unc).shape == slicer.util.arrayFromVolume(volume).shape
    table = result.table
    ranked = [table.GetCellText(r, 1) for r in range(table.GetNumberOfRows())]
    scores = {v.GetName(): s["mean_uncertainty_foreground"] for v, s in zip(result.volumes, result.scores)}
    assert ranked == sorted(scores, key=scores.get, reverse=True)
    assert [v.GetName() for v in result.mostUncertainFirst()] == ranked
    assert composite.GetBackgroundVolumeID() == result.mostUncertainFirst()[0].GetID()
    assert not (result.outputDir.parent / "inputs").exists()  # exported inputs removed after success
    # New outputs are never offered as training inputs.
    assert [v.GetName() for v in standinLogic.defaultUnlabeledVolumes(pairs)] == ["CT3", "CT 4 (follow-up)"]


def test_outputs_follow_the_input_volume_transform(standinLogic, threeCases):
    """A volume under a (registration) transform: its outputs are on its local grid, under the same transform."""
    pairs, unlabeled = threeCases
    transform = standinLogic.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    unlabeled[0].SetAndObserveTransformNodeID(transform.GetID())
    trained = standinLogic.train(pairs, unlabeled, iterations=2)
    result = standinLogic.predict(trained.runDir, unlabeled, show=False)
    assert result.segmentations[0].GetTransformNodeID() == transform.GetID()
    assert result.uncertainties[0].GetTransformNodeID() == transform.GetID()
    assert sameGeometry(result.uncertainties[0], unlabeled[0])


def test_prediction_without_a_trained_model_is_refused(standinLogic, threeCases, tmp_path):
    _, unlabeled = threeCases
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="has no checkpoint"):
        standinLogic.predict(tmp_path / "empty", unlabeled)


def test_non_blocking_prediction(standinLogic, threeCases):
    pairs, unlabeled = threeCases
    trained = standinLogic.train(pairs, unlabeled, iterations=2)
    job = standinLogic.predict(trained.runDir, unlabeled + [pairs[0][0]], wait=False, show=False)
    pollUntil(job, lambda j: j.finished)
    assert job.status == ExitStatus.FINISHED and len(job.result.segmentations) == 2 and job.result.table is not None
    assert job.tracker.phase == "predicted"


def test_list_runs(standinLogic, threeCases):
    pairs, unlabeled = threeCases
    first = standinLogic.train(pairs, unlabeled, iterations=2, runDir=standinLogic.newRunDir(name="first run"))
    assert first.runDir.name == "first_run"
    runs = standinLogic.listRuns()
    assert [r.path for r in runs] == [first.runDir] and "finished, 2/2 iterations" in runs[0].describe()
