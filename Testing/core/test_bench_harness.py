"""benchmarks/harness.py: what the benchmark scripts share."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def harness(load_script):
    return load_script("harness")


def test_variant_resolves_budget_functions_and_train_overrides(harness):
    method_train = {"ucmt": {"optimizer": "adamw"}}
    v = harness.Variant("coranet", params={"pretrain_iterations": lambda n: n // 2, "supervised": "code"})
    assert v.resolve_params(400) == {"pretrain_iterations": 200, "supervised": "code"}
    assert harness.variant("ucmt", {}).train_overrides(method_train) == {"optimizer": "adamw"}
    assert harness.Variant("ucmt", train={}).train_overrides(method_train) == {}
    assert harness.variant("ucmt_x", {"ucmt_x": harness.Variant("ucmt")}).method == "ucmt"
    assert harness.Variant("ucmt").data == {}


def test_bench_la_intensity_variant_writes_a_loadable_config(load_script, harness, tmp_path):
    from semisup.config import load_config

    bench = load_script("bench_la")
    v = bench.VARIANTS["supervised_intensity"]
    setting = bench.SETTINGS["cpu"]
    harness.write_run_config(tmp_path, {**setting, "data": {**setting["data"], **v.data}}, tmp_path / "d.json",
                             tmp_path / "cache", v.method, {}, {"iterations": 10})
    cfg = load_config(tmp_path / "config.yaml")
    assert cfg.data.intensity_augment is True and cfg.method.name == "supervised"


def test_child_env_sets_threads_and_library_path(harness):
    env = harness.child_env(3)
    assert all(env[k] == "3" for k in harness.THREAD_VARIABLES)
    assert env["PYTHONPATH"].endswith("SemiSupUncertainty")


def test_merge_result_keeps_what_another_sweep_wrote(harness, tmp_path):
    path = tmp_path / "results.json"
    harness.merge_result(path, "a", 1)
    harness.write_json(path, {**harness.read_results(path), "b": 2})  # another invocation writes meanwhile
    assert harness.merge_result(path, "c", 3) == {"a": 1, "b": 2, "c": 3}
    assert not list(tmp_path.glob(".*.tmp"))


def _merge_many(harness, path, worker: int, count: int) -> None:
    for i in range(count):
        harness.merge_result(path, f"w{worker}-{i}", i)


def test_merge_result_keeps_every_result_of_processes_writing_at_once(harness, tmp_path):
    # Two benchmark processes share one results.json; a read-modify-write without the lock
    # lets one process overwrite what the other had just added.
    import multiprocessing

    path = tmp_path / "results.json"
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_merge_many, args=(harness, path, w, 25)) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    assert len(harness.read_results(path)) == 100


def test_training_switches_are_read_from_a_real_runs_train_log(harness, tmp_path):
    from semisup.data.synthetic import make_synthetic_dataset

    dataset = make_synthetic_dataset(tmp_path / "data", labeled=2, unlabeled=1, validation=1, test=0,
                                     shape=(32, 32, 16), seed=5, difficulty=0.1)
    run = tmp_path / "run"
    run.mkdir()
    setting = {"data": {"modality": "MR", "spatial_dims": 3, "patch_size": [32, 32, 16]},
               "network": {"name": "vnet", "base_filters": 4, "dropout": False}, "inference": {"mc_samples": 1}}
    harness.write_run_config(run, setting, dataset, tmp_path / "cache", "supervised", {},
                             {"iterations": 2, "val_every": 2, "checkpoint_every": 2, "log_every": 1,
                              "labeled_batch": 2, "amp_cpu": False, "channels_last": False})
    with open(run / "stdout.jsonl", "w") as out:
        harness.train_in_subprocess(run, harness.child_env(1), out)
    switches = harness.training_switches(run)
    assert switches is not None and "channels_last False, bf16 autocast False" in switches
    assert harness.training_switches(tmp_path) is None


def test_kfold_is_deterministic_disjoint_covering_and_keeps_groups(load_script):
    harness = load_script("harness")
    items = [f"p{i // 2:02d}_f{i % 2}" for i in range(22)]  # 11 patients x 2 frames
    patient = lambda s: s.split("_")[0]  # noqa: E731
    reports = [harness.kfold(items, 5, f, group=patient)[1] for f in range(5)]
    assert reports == [harness.kfold(items, 5, f, group=patient)[1] for f in range(5)]  # deterministic
    flat = [x for r in reports for x in r]
    assert sorted(flat) == sorted(items) and len(flat) == len(set(flat))  # covering, disjoint
    for f, report in enumerate(reports):
        rest, rep = harness.kfold(items, 5, f, group=patient)
        assert set(rest).isdisjoint(rep) and len(rest) + len(rep) == len(items)
        assert {patient(x) for x in rep}.isdisjoint({patient(x) for x in rest})  # a patient never split
        assert rep == [x for x in items if x in rep]  # list order kept
    # 11 patients in 5 folds: 3, 2, 2, 2, 2 patients.
    assert sorted(len(r) for r in reports) == [4, 4, 4, 4, 6]
    with pytest.raises(ValueError, match="--fold"):
        harness.kfold(items, 5, 5)
    with pytest.raises(ValueError, match="--folds"):
        harness.kfold(items[:3], 5, 0)


def test_case_summary_hand_computed(load_script):
    harness = load_script("harness")
    s = harness.case_summary([0.9, 0.8, 0.3, 0.7, 0.1])
    # sorted 0.1 0.3 0.7 0.8 0.9: mean 2.8 / 5 = 0.56, median 0.7, worst 0.1,
    # p5: position 0.05 x 4 = 0.2 between 0.1 and 0.3 -> 0.1 + 0.2 x 0.2 = 0.14; two under 0.5.
    assert s == pytest.approx({"mean": 0.56, "median": 0.7, "worst": 0.1, "p5": 0.14, "under_0.5": 2, "cases": 5})


def test_pooled_folds_pairs_cases_across_folds(load_script):
    harness = load_script("harness")
    split = {"folds": 2}
    results = {
        "sup/f0": {"method": "supervised", "split": split, "per_case_dice": {"a": 0.5, "b": 0.6}},
        "sup/f1": {"method": "supervised", "split": split, "per_case_dice": {"c": 0.7}},
        "new/f0/s1": {"method": "uamt", "split": split, "per_case_dice": {"a": 0.6, "b": 0.7}},
        "new/f0/s2": {"method": "uamt", "split": split, "per_case_dice": {"a": 0.8, "b": 0.5}},
        "new/f1": {"method": "uamt", "split": split, "per_case_dice": {"c": 0.9}},
        "single-split": {"method": "uamt", "per_case_dice": {"z": 0.0}},  # not a fold: left out
    }
    pooled = harness.pooled_folds(results)
    # uamt per case: a = (0.6 + 0.8) / 2 = 0.7, b = 0.6, c = 0.9 -> differences 0.2, 0.0, 0.2.
    assert pooled["uamt"]["cases"] == 3 and pooled["uamt"]["seeds_per_case"] == 2
    assert pooled["uamt"]["mean"] == pytest.approx((0.7 + 0.6 + 0.9) / 3)
    vs = pooled["uamt"]["vs_baseline"]
    assert vs["cases"] == 3 and vs["better"] == 2 and vs["mean_difference"] == pytest.approx(0.4 / 3)
    assert "vs_baseline" not in pooled["supervised"]
    table = harness.pooled_table(results, "cases").splitlines()
    assert table[-1].startswith("| uamt | 3 | 73.33 | 70.0 | 60.0 |") and "2/3, +13.33" in table[-1]
    assert harness.pooled_table({"single-split": results["single-split"]}) == ""


def test_progress_events_skip_a_killed_runs_truncated_line(harness, tmp_path):
    stream = tmp_path / "progress.jsonl"
    stream.write_text(
        '{"event": "start", "time": 1.0, "iterations": 4}\n'
        "a stray print\n"
        '{"event": "iteration", "time": 2.0, "iteration": 1, "iterations": 4, "loss": 0.5, "it_per_s": 2.0}\n'
        '{"event": "iteration", "time": 3.0, "itera'  # killed mid-write
    )
    events = harness.progress_events(stream)
    assert [e["event"] for e in events] == ["start", "iteration"]
    assert harness.iteration_rates(events) == [2.0]


def test_label_source_comparison_pairs_cases_and_refuses_a_report_set(load_script, tmp_path):
    import json

    label_source = load_script("label_source")

    def case(mc, off, mc_lcc, off_lcc):
        return {"settings": {"gaussian_shared": {"dice_mc_mean_linear": {"a": mc}, "dice_dropout_off_linear": {"a": off},
                                                 "dice_mc_mean_linear_lcc": {"a": mc_lcc}, "dice_dropout_off_linear_lcc": {"a": off_lcc}}}}

    path = tmp_path / "predict_options.json"
    path.write_text(json.dumps({"dataset": "runs/x/fold0of5/dataset.json", "per_case": [
        case(0.5, 0.7, 0.6, 0.6), case(0.8, 0.6, 0.8, 0.9), case(0.6, 0.8, 0.5, 0.7)]}))
    result = label_source.compare([path])
    linear = result["restores"]["linear"]
    assert result["cases"] == 3 and abs(linear["mc_mean"] - 1.9 / 3) < 1e-9 and abs(linear["dropout_off"] - 2.1 / 3) < 1e-9
    assert linear["dropout_off_better"] == 2 and result["restores"]["linear_lcc"]["dropout_off_better"] == 2
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"dataset": "runs/x/fold0of5/dataset_report.json", "per_case": []}))
    with pytest.raises(SystemExit, match="report set"):
        label_source.compare([report])


def test_cv_report_tables_average_seeds_and_pool_only_common_folds(load_script):
    report = load_script("cv_report")

    def result(method, fold, seed, dice):
        return {"method": method, "seed": seed, "split": {"folds": 5, "fold": fold}, "per_case_dice": dice}

    results = {
        "a": result("supervised", 0, 1, {"x": 0.5, "y": 0.7}),
        "b": result("uamt", 0, 1, {"x": 0.6, "y": 0.9}),
        "c": result("uamt", 0, 2, {"x": 0.8, "y": 0.9}),
        "d": result("supervised", 1, 1, {"z": 0.4}),
        "e": {"method": "uamt", "per_case_dice": {"x": 0.0}},  # a single-split result: ignored
    }
    table = report.fold_table(results)
    # uamt on fold 0: seeds averaged per case (x 0.7, y 0.9): mean 80.00, both cases better, +20.00
    assert "| 0 | uamt | 2 | 2 | 80.00 | 80.0 | 70.0 |" in table and "2/2, +20.00" in table
    assert "| 1 | supervised | 1 | 1 | 40.00 |" in table
    common = report.common_folds(results, ["supervised", "uamt"])
    assert set(common) == {"a", "b", "c"}  # fold 1 has no uamt
    seeds = report.seed_table(results)
    assert "| 0 | uamt | 1: 75.00 (60.0), 2: 85.00 (80.0) | 7.07 |" in seeds


def test_paired_comparison_by_patient_tests_patients_not_frames(load_script):
    harness = load_script("harness")
    assert harness.patient_of("./imagesTr/patient038_frame01.nrrd") == harness.patient_of("patient038_frame02") == "patient038"
    baseline = {f"patient{p}_frame0{f}": 0.5 for p in range(4) for f in (1, 2)}
    # Every frame better, by 0.01 .. 0.08 (distinct, so scipy's exact test applies).
    candidate = {case: 0.5 + 0.01 * (i + 1) for i, case in enumerate(sorted(baseline))}
    by_case = harness.paired_comparison(candidate, baseline)
    by_patient = harness.paired_comparison(candidate, baseline, harness.patient_of)
    # Exact two-sided Wilcoxon, all differences positive: 2 / 2^n, n = 8 frames or 4 patients.
    assert by_case["p"] == pytest.approx(2 / 2**8) and by_case["units"] == 8
    assert by_patient["p"] == pytest.approx(2 / 2**4) and by_patient["units"] == 4
    assert by_patient["better"] == 8 and by_patient["cases"] == 8
    assert by_patient["mean_difference"] == pytest.approx(by_case["mean_difference"]) == pytest.approx(0.045)
    assert harness.comparison_cell(by_patient, "patients") == "8/8, +4.50, p = 0.125 (4 patients)"
    split = {"folds": 5, "fold": 0}
    results = {"s": {"method": "supervised", "split": split, "per_case_dice": baseline},
               "u": {"method": "uamt", "split": split, "per_case_dice": candidate}}
    assert "p = 0.125 (4 patients)" in harness.pooled_table(results, "volumes", group=harness.patient_of)
    assert "p = 0.125 (4 patients)" in load_script("cv_report").fold_table(results, group=harness.patient_of)


def test_harness_reads_progress_with_this_checkouts_library_without_an_install(tmp_path):
    """A sweep script reads its children's progress with the library they ran (PYTHONPATH),
    not whatever copy pip last installed: a stale editable install once lost a sweep's scores."""
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[2] / "benchmarks"
    stream = tmp_path / "progress.jsonl"
    stream.write_text('{"event": "start", "time": 1.0, "iterations": 2}\n')
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import harness; "
            "print(harness.progress_events(sys.argv[2])[0]['event'], harness.child_env(1)['PYTHONPATH'] == str(harness.LIBRARY))")
    # -S: no site-packages, so no installed semisup to fall back on.
    out = subprocess.run([sys.executable, "-S", "-c", code, str(bench), str(stream)], capture_output=True, text=True,
                         cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["start", "True"]


def test_training_seconds_adds_every_attempt_of_a_resumed_run(harness, tmp_path):
    stream = tmp_path / "progress.jsonl"
    stream.write_text(
        '{"event": "start", "time": 10.0, "iterations": 4}\n'
        '{"event": "iteration", "time": 40.0, "iteration": 2, "iterations": 4, "loss": 0.5, "it_per_s": 0.1}\n'
        '{"event": "start", "time": 100.0, "iterations": 4}\n'  # killed at 40, resumed at 100
        '{"event": "iteration", "time": 130.0, "iteration": 4, "iterations": 4, "loss": 0.4, "it_per_s": 0.1}\n'
        '{"event": "done", "time": 131.0, "iteration": 4}\n'
        '{"event": "start", "time": 500.0, "iterations": 4}\n'  # a rerun of a finished run
        '{"event": "done", "time": 500.5, "iteration": 4}\n'
    )
    # (40 - 10) + (131 - 100) + (500.5 - 500): the time between attempts is not training.
    events = harness.progress_events(stream)
    assert harness.training_seconds(events) == pytest.approx(61.5)
    assert harness.attempt_count(events) == 3
