"""The worker protocol as code: one event schema for writer and readers, the progress state, exit codes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from semisup.engine.events import Emitter
from semisup.protocol.events import EventSchemaError
from semisup.protocol import EVENTS, ExitStatus, ProgressTracker, explain_exit, format_duration, parse_line, register_event, validate

REPO = Path(__file__).resolve().parents[2]


def line(event: str, **fields) -> str:
    return json.dumps({"event": event, "time": 1000.0, **fields})


START = line("start", run_dir="/r", method="uamt", iterations=100, start_iteration=0, device="cuda", device_name="NVIDIA H100 (79.1 GiB)", amp=True, version="0.1.0", labeled_cases=4, unlabeled_cases=16, validation_cases=1)


# -- the schema -----------------------------------------------------------------------
def test_every_event_of_the_protocol_is_parsed_with_its_fields():
    s = parse_line(START)
    assert s.name == "start" and s.device_name.startswith("NVIDIA") and s.amp is True and s.labeled_cases == 4
    e = parse_line(line("iteration", iteration=5, iterations=100, loss=0.5, losses={"supervised": 0.4, "consistency": 0.1}, lr=0.01, it_per_s=2.0, eta_seconds=47.5))
    assert e.iteration == 5 and e.losses == {"supervised": 0.4, "consistency": 0.1} and e.eta_seconds == 47.5
    v = parse_line(line("validation", iteration=10, dice=0.8, dice_per_class={"Liver": 0.8}, best_dice=0.8, is_best=True))
    assert v.is_best and v.dice_per_class == {"Liver": 0.8}
    c = parse_line(line("checkpoint", iteration=10, kind="best", path="/r/checkpoints/best.pt"))
    assert c.name == "checkpoint" and c.kind == "best"  # a field named like an attribute of other APIs
    assert parse_line(line("cancelled", iteration=7, checkpoint="l")).checkpoint == "l"
    err = parse_line(line("error", message="labelsTr/a.nrrd: geometry differs", type="DataError"))
    assert err.type == "DataError" and err.message.startswith("labelsTr")
    p = parse_line(line("predicted", index=1, total=2, case="CT1", outputs={"label": "a", "uncertainty": "b"}, scores={"mean_uncertainty_foreground": 0.3, "foreground_voxels": 12}))
    assert p.scores["foreground_voxels"] == 12.0 and p.outputs["label"] == "a"


def test_garbage_unknown_events_and_unknown_fields_are_ignored_by_readers():
    for text in ["", "   ", "not json", "{truncated", "[1, 2]", '{"no_event": 1}', '{"event": 5}', line("future_event", x=1), "Traceback (most recent call last):"]:
        assert parse_line(text) is None
    e = parse_line(line("iteration", iteration=3, loss=0.2, brand_new_field={"a": 1}))
    assert e.iteration == 3 and e.raw["brand_new_field"] == {"a": 1}
    assert parse_line(line("iteration", loss=0.2)) is None  # an iteration without its number says nothing
    with pytest.raises(AttributeError, match="no field 'lose'"):
        e.lose  # a reader cannot use a field nobody emits


def test_non_finite_and_wrongly_typed_values_read_as_the_default():
    e = parse_line(line("iteration", iteration="4", loss=None, lr="fast", losses={"a": None, "b": "0.5"}, it_per_s=True))
    assert e.iteration == 4 and e.loss is None and e.lr is None and e.losses == {"b": 0.5} and e.it_per_s is None
    assert parse_line(line("iteration", iteration=2.5)) is None  # not a whole number
    assert parse_line(line("start")).device == "" and parse_line(line("start")).amp is False


def test_the_writer_is_checked_against_the_same_schema():
    assert validate({"event": "iteration", "time": 1.0, "iteration": 3, "loss": 0.5, "losses": {"a": 0.1}}) == []
    assert validate({"event": "iteration", "time": 1.0, "iteration": 3, "loss": None}) == []  # NaN is written as null
    assert "unknown event 'iteraton'" in validate({"event": "iteraton"})[0]
    assert "field 'los' is not in the schema" in validate({"event": "iteration", "iteration": 1, "los": 0.5})[0]
    assert "should be int" in validate({"event": "iteration", "iteration": "1"})[0]
    assert "should be int" in validate({"event": "iteration", "iteration": True})[0]
    assert "required field 'iteration'" in validate({"event": "iteration"})[0]
    assert "should be float_map" in validate({"event": "iteration", "iteration": 1, "losses": {"a": "x"}})[0]

    class Keep:
        def __init__(self):
            self.records = []

        def emit(self, record):
            self.records.append(record)

        def close(self):
            pass

    sink = Keep()
    strict = Emitter([sink], validate=True)
    strict("iteration", iteration=1, loss=float("nan"))  # cleaned to null before the check
    with pytest.raises(EventSchemaError, match="field 'best' is not in the schema"):
        strict("validation", iteration=1, best=0.5)
    assert len(sink.records) == 1  # nothing off-schema reaches a sink
    Emitter([sink], validate=False)("validation", iteration=1, best=0.5)  # off by default outside the tests
    assert len(sink.records) == 2


def test_registering_an_event_is_one_call_and_both_sides_know_it():
    try:
        register_event("review_start", "a review session begins", required=("cases",), cases=("int", "volumes to review"))
        assert validate({"event": "review_start", "cases": 3}) == []
        assert parse_line(line("review_start", cases=3)).cases == 3
        with pytest.raises(ValueError, match="already registered"):
            register_event("review_start", "again")
        with pytest.raises(ValueError, match="unknown type"):
            register_event("bad", "x", n=("integer", ""))
        with pytest.raises(ValueError, match="reserved"):
            register_event("bad2", "x", name=("str", ""))
    finally:
        EVENTS.pop("review_start", None)


def test_the_protocol_document_lists_exactly_the_schema():
    """docs/worker-protocol.md's table names every event and field of the schema, and no other."""
    text = (REPO / "docs" / "worker-protocol.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| (.*) \|$", text, flags=re.M))
    assert set(rows) == set(EVENTS)
    for name, spec in EVENTS.items():
        documented = set(re.findall(r"`(\w+)`", rows[name]))
        assert set(spec.fields) <= documented, f"{name}: {set(spec.fields) - documented} not documented"


def test_the_schema_module_imports_nothing_heavy():
    import subprocess
    import sys

    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "import semisup.protocol\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'monai', 'SimpleITK', 'yaml')))\n"
    ) % str(REPO / "SemiSupUncertainty")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


# -- the progress state -------------------------------------------------------------------
def test_tracker_follows_a_run_and_describes_it():
    t = ProgressTracker()
    assert "Starting" in t.status_text() and t.fraction() == 0.0
    t.feed(START)
    for i in range(1, 6):
        t.feed(line("iteration", iteration=i, iterations=100, loss=1.0 / i, losses={"supervised": 0.9 / i}, lr=0.01, it_per_s=2.0, eta_seconds=(100 - i) / 2))
    t.feed(line("validation", iteration=5, dice=0.7, dice_per_class={"Liver": 0.7}, best_dice=0.7, is_best=True))
    assert t.fraction() == 0.05 and t.iteration == 5 and t.device_name.startswith("NVIDIA")
    text = t.status_text()
    assert "Iteration 5/100" in text and "loss 0.2000" in text and "Dice 0.700" in text and "ETA 48 s" in text
    assert len(t.loss_history) == 5 and t.dice_history == [(5, 0.7)]
    t.feed(line("checkpoint", iteration=5, kind="best", path="b0.pt"))
    t.feed(line("checkpoint", iteration=5, kind="last", path="l0.pt"))
    assert t.best_checkpoint == "b0.pt" and t.last_checkpoint == "l0.pt"
    t.feed(line("done", iteration=100, best_dice=0.9, best_checkpoint="b.pt", last_checkpoint="l.pt", seconds=5))
    assert t.phase == "done" and t.fraction() == 1.0 and t.best_checkpoint == "b.pt" and t.status_text().startswith("Finished")


def test_eta_is_estimated_when_the_worker_gives_none():
    t = ProgressTracker()
    t.feed(json.dumps({"event": "start", "time": 100.0, "iterations": 50, "start_iteration": 10}))
    t.feed(json.dumps({"event": "iteration", "time": 110.0, "iteration": 20, "loss": 0.5}))
    assert abs(t.eta_seconds - 30.0) < 1e-6  # 10 iterations in 10 s, 30 left


def test_resumed_run_drops_the_iterations_trained_again():
    t = ProgressTracker()
    t.feed(START)
    for i in range(1, 11):
        t.feed(line("iteration", iteration=i, iterations=100, loss=1.0))
    t.feed(line("validation", iteration=10, dice=0.5, best_dice=0.5))
    version = t.history_version
    t.feed(line("start", iterations=100, start_iteration=6))
    assert [p[0] for p in t.loss_history] == [1, 2, 3, 4, 5, 6] and t.dice_history == []
    assert t.history_version == version + 1 and t.iteration == 6


def test_error_and_cancel_states_read_in_plain_words(tmp_path):
    t = ProgressTracker()
    t.feed(START)
    t.feed(line("error", message="out of memory: lower data.patch_size", type="RuntimeError"))
    assert t.phase == "failed" and t.status_text() == "Failed: out of memory: lower data.patch_size"
    path = tmp_path / "progress.jsonl"
    path.write_text("\n".join([START, line("iteration", iteration=3, iterations=100, loss=0.4), line("cancelled", iteration=3, checkpoint="l.pt"), "{broken"]))
    replay = ProgressTracker.from_file(path)
    assert replay.phase == "cancelled" and replay.last_checkpoint == "l.pt" and "resume" in replay.status_text()


def test_prediction_progress():
    t = ProgressTracker()
    t.feed(line("predict_start", cases=2, mc_samples=8, device="cpu"))
    t.feed(line("predicted", index=1, total=2, case="a", outputs={}, scores={}))
    assert t.fraction() == 0.5 and "1/2" in t.status_text()
    t.feed(line("warning", case="b", message="inputs/b.nrrd: not a readable image"))
    t.feed(line("predict_done", cases=1, scores_csv="s.csv", seconds=1, failed=["inputs/b.nrrd"]))
    assert t.fraction() == 1.0 and t.scores_csv == "s.csv" and t.warnings == ["b: inputs/b.nrrd: not a readable image"]


def test_format_duration():
    assert format_duration(None) == "" and format_duration(-1) == ""
    assert format_duration(45) == "45 s"
    assert format_duration(200) == "3 min 20 s"  # 3 * 60 + 20
    assert format_duration(7500) == "2 h 05 min"  # 2 * 3600 + 5 * 60 + 300 s dropped


# -- exit codes -----------------------------------------------------------------------------
def test_exit_codes_read_in_plain_words():
    assert explain_exit(0) == (ExitStatus.FINISHED, "")
    assert explain_exit(3)[0] == ExitStatus.CANCELLED
    assert explain_exit(2, "config.yaml: train.lr must be > 0") == (ExitStatus.BAD_INPUT, "config.yaml: train.lr must be > 0")
    status, text = explain_exit(-9)
    assert status == ExitStatus.KILLED and "SIGKILL" in text and "out of memory" in text
    status, text = explain_exit(1, "", ["Traceback (most recent call last):", "ModuleNotFoundError: No module named 'monai'"])
    assert status == ExitStatus.FAILED and "Install dependencies" in text


def test_messages_for_people():
    status, message = explain_exit(1, "", ["Traceback (most recent call last):", '  File "x.py", line 1', "ValueError: labelsTr/a.nrrd: label 7 but 2 classes"])
    assert status == ExitStatus.FAILED and message == "ValueError: labelsTr/a.nrrd: label 7 but 2 classes"
    _, message = explain_exit(2, "data.patch_size must be positive", [])
    assert message == "data.patch_size must be positive"
    status, message = explain_exit(7, "", [])
    assert status == ExitStatus.FAILED and "exit code 7" in message
    assert explain_exit(-15, "", [], cancel_requested=True)[0] == ExitStatus.CANCELLED


def test_the_slicer_launcher_crash_is_recognised_as_out_of_memory():
    # CTK AppLauncher (Base/ctkAppLauncher.cpp, applicationFinished) on a crashed child: this line, exit 1.
    tail = ["INFO semisup: iteration 40", "error: [/opt/Slicer-5.10.0/bin/../bin/python-real] exit abnormally - Report the problem."]
    status, text = explain_exit(1, "", tail, what="The training process")
    assert status == ExitStatus.KILLED and "out of memory" in text and "The training process" in text
    # the worker's own error message wins over the launcher's line
    assert explain_exit(1, "the loss became nan", tail) == (ExitStatus.FAILED, "the loss became nan")


# -- the run folder ---------------------------------------------------------------------------
def test_run_state_is_read_from_the_run_folder(tmp_path):
    from semisup.protocol.run_folder import RunInfo, class_names_of_run, list_runs

    run = tmp_path / "run"
    assert RunInfo.read(run).state == "new" and not RunInfo.read(run).can_resume
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("method: {name: uamt}\n")
    (run / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "2": "Kidney", "1": "Liver"}}))
    (run / "progress.jsonl").write_text("\n".join([START, line("iteration", iteration=3, iterations=100, loss=0.4)]))
    info = RunInfo.read(run)
    assert info.state == "running-or-interrupted" and info.can_resume and not info.can_predict
    assert class_names_of_run(run) == ["Liver", "Kidney"] and info.class_names == ["Liver", "Kidney"]
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    with open(run / "progress.jsonl", "a") as fh:
        fh.write("\n" + line("cancelled", iteration=3, checkpoint="l.pt"))
    info = RunInfo.read(run)
    assert info.state == "interrupted" and info.can_predict and info.describe() == "run: uamt, cancelled at iteration 3/100"
    with open(run / "progress.jsonl", "a") as fh:
        fh.write("\n" + line("done", iteration=100, best_dice=0.8))
    info = RunInfo.read(run)
    assert info.state == "finished" and not info.can_resume and info.describe().endswith("best Dice 0.800")
    assert [r.path for r in list_runs(tmp_path)] == [run]
