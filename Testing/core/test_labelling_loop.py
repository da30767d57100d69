"""Strategies, the paired tests of the curve, and `semisup simulate-labelling` end to end on synthetic data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from semisup.cli import main
from semisup.config import DataConfig, InferenceConfig, MethodConfig, NetworkConfig, RunConfig, TrainConfig, save_config
from semisup.data.synthetic import make_synthetic_dataset
from semisup.inference.selection import intensity_histogram, select_next
from semisup.measure.labelling_curve import curve_summary, markdown_table, paired_tests, write_labelling_results


SCORES = {
    "a": {"mean_uncertainty_foreground": 0.10, "foreground_voxels": 50},
    "b": {"mean_uncertainty_foreground": 0.30, "foreground_voxels": 50},
    "c": {"mean_uncertainty_foreground": 0.20, "foreground_voxels": 50},
    "d": {"mean_uncertainty_foreground": 0.00, "foreground_voxels": 0},  # empty prediction
}


def test_uncertainty_picks_highest_scores_empty_prediction_first():
    rng = np.random.default_rng(0)
    assert select_next("uncertainty", list(SCORES), 2, rng=rng, scores=SCORES) == ["d", "b"]


def test_random_picks_distinct_pool_members():
    picks = select_next("random", ["a", "b", "c"], 3, rng=np.random.default_rng(0))
    assert sorted(picks) == ["a", "b", "c"]


def test_diverse_skips_a_near_duplicate_of_the_labeled_set():
    # Candidates (top 2k = 4 by uncertainty): d, b, c, a; b duplicates the labeled L.
    # Standardised over {L, d, b, c, a}: x std 2, y std 1.265. From L: d 2.5, c 2.37, a 1.58,
    # b 0 -> d; then from {L, d}: c 2.37 (to L), a 1.58, b 0 -> c. The uncertain b is skipped.
    feats = {"L": np.array([0.0, 0.0]), "b": np.array([0.0, 0.0]), "d": np.array([5.0, 0.0]),
             "c": np.array([0.0, 3.0]), "a": np.array([0.0, 2.0])}
    picks = select_next("diverse", list(SCORES), 2, rng=np.random.default_rng(0), scores=SCORES, features=feats, labeled=["L"])
    assert picks == ["d", "c"] and "b" not in picks


def test_pool_smaller_than_k_names_the_pool():
    with pytest.raises(ValueError, match=r"only 2 \(a, b\)"):
        select_next("uncertainty", ["a", "b"], 3, rng=np.random.default_rng(0), scores=SCORES)


def test_intensity_histogram_sums_to_one():
    h = intensity_histogram(np.array([-10.0, 0.1, 0.2, 10.0]), bins=4, value_range=(-2.0, 2.0))
    assert h.tolist() == [0.25, 0.0, 0.5, 0.25]


def test_curve_and_paired_tests_hand_computed():
    rows = []
    for seed, (r, u) in enumerate([(0.50, 0.60), (0.55, 0.58), (0.40, 0.49)]):
        rows.append({"seed": seed, "strategy": "random", "n_labeled": 4, "dice": r, "case_dice": {"x": r, "y": r - 0.1}})
        rows.append({"seed": seed, "strategy": "uncertainty", "n_labeled": 4, "dice": u, "case_dice": {"x": u, "y": u - 0.05}})
    curve = {(c["strategy"], c["n_labeled"]): c for c in curve_summary(rows)}
    assert curve[("random", 4)]["dice_mean"] == pytest.approx(0.48333333)
    assert curve[("random", 4)]["worst_case"] == pytest.approx(0.30)  # case y of seed 2: 0.40 - 0.1
    assert curve[("uncertainty", 4)]["worst_case"] == pytest.approx(0.44)
    (test,) = paired_tests(rows)
    assert test["mean_difference"] == pytest.approx((0.10 + 0.03 + 0.09) / 3) and test["wins"] == 3
    from scipy import stats

    assert test["t_test_p"] == pytest.approx(stats.ttest_rel([0.60, 0.58, 0.49], [0.50, 0.55, 0.40]).pvalue)
    assert test["wilcoxon_p"] is not None and test["case_pairs"] == 6
    table = markdown_table(list(curve.values()), [test]).splitlines()
    assert table[2].startswith("| 4 | random | 3 | 48.33 ± ") and table[2].endswith("| 30.0 | - |")  # baseline first
    assert table[3].startswith("| 4 | uncertainty | 3 | 55.67 ± ") and "| 44.0 | +7.33, 3/0, " in table[3]
    single = paired_tests([r for r in rows if r["seed"] == 0])
    assert single[0]["t_test_p"] is None and "one seed" in single[0]["reasons"]["t_test_p"]


def _config(tmp_path: Path, dataset: Path) -> Path:
    cfg = RunConfig(
        data=DataConfig(dataset=str(dataset), patch_size=[32, 32, 16]),
        network=NetworkConfig(name="vnet", base_filters=4),
        method=MethodConfig(name="supervised"),
        train=TrainConfig(iterations=3, lr=0.05, lr_step=10_000, val_every=1000, checkpoint_every=1000, log_every=1),
        inference=InferenceConfig(mc_samples=2, overlap=0.0),
    )
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    return path


@pytest.mark.slow
def test_simulate_labelling_end_to_end(tmp_path):
    dataset = make_synthetic_dataset(tmp_path / "data", labeled=5, unlabeled=0, validation=1, test=0, shape=(32, 32, 16), seed=7, difficulty=0.3)
    config = _config(tmp_path, dataset)
    out = tmp_path / "loop"
    code = main(["simulate-labelling", "--config", str(config), "--output", str(out),
                 "--seeds", "0", "--start", "1", "--step", "2", "--budget", "3", "--progress", "none"])
    assert code == 0
    with (out / "labelling.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 * 3 * 2  # seeds x strategies x rounds
    doc = json.loads((out / "labelling.json").read_text())
    by = {(int(r["seed"]), r["strategy"], int(r["round"])): r for r in doc["rows"]}
    for seed in (0,):
        # every strategy starts from the same labeled volumes of its seed
        assert len({tuple(by[(seed, s, 0)]["labeled"]) for s in ("random", "uncertainty", "diverse")}) == 1
        for s in ("random", "uncertainty", "diverse"):
            r0, r1 = by[(seed, s, 0)], by[(seed, s, 1)]
            assert r1["labeled"] == r0["labeled"] + r0["picked_next"] and len(r0["picked_next"]) == 2
            assert r1["warm_start_from"].endswith("round0_n1/run/checkpoints/best.pt")
            assert not set(r1["labeled"]) & set(doc["settings"]["held_out"])
    assert {t["strategy"] for t in doc["paired_tests"]} == {"uncertainty", "diverse"}
    assert (out / "labelling.png").stat().st_size > 5000
    assert (out / "labelling.md").read_text().count("\n") == 2 + 3 * 2  # header + strategies x budgets
    # The uncertainty picks are the top-scored pool volumes of round 0.
    # Round 0 is trained once per seed and shared: one folder, one model, the same held-out Dice.
    assert sorted(p.name for p in (out / "seed0").iterdir()) == ["diverse", "random", "round0_n1", "uncertainty"]
    assert not list((out / "seed0").glob("*/round0_n1"))
    assert len({by[(0, s, 0)]["dice"] for s in ("random", "uncertainty", "diverse")}) == 1
    scores = list(csv.DictReader((out / "seed0" / "round0_n1" / "pool" / "scores.csv").open()))
    assert by[(0, "uncertainty", 0)]["picked_next"] == [r["case"] for r in scores[:2]] or any(
        int(r["foreground_voxels"]) == 0 for r in scores
    )


def test_pool_too_small_is_refused_before_training(tmp_path, capsys):
    dataset = make_synthetic_dataset(tmp_path / "data", labeled=2, unlabeled=0, validation=1, test=0, shape=(16, 16, 16), seed=8)
    config = _config(tmp_path, dataset)
    code = main(["simulate-labelling", "--config", str(config), "--output", str(tmp_path / "o"),
                 "--start", "1", "--step", "2", "--budget", "3", "--progress", "none"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "pool is smaller" in err and "synth_000, synth_001" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("verb", ["simulate-labelling", "calibrate"])
def test_new_verbs_have_help(verb, capsys):
    with pytest.raises(SystemExit) as stop:
        main([verb, "--help"])
    assert stop.value.code == 0 and f"usage: semisup {verb}" in capsys.readouterr().out


def test_pool_size_keeps_the_first_candidates(tmp_path, capsys):
    dataset = make_synthetic_dataset(tmp_path / "data", labeled=4, unlabeled=0, validation=1, test=0, shape=(16, 16, 16), seed=8)
    config = _config(tmp_path, dataset)
    code = main(["simulate-labelling", "--config", str(config), "--output", str(tmp_path / "o"), "--pool-size", "2",
                 "--start", "1", "--step", "2", "--budget", "3", "--progress", "none"])
    err = capsys.readouterr().err
    assert code == 2 and "2 labeled candidate(s) (synth_000, synth_001)" in err
    assert not (tmp_path / "o").exists()
    code = main(["simulate-labelling", "--config", str(config), "--output", str(tmp_path / "o"), "--pool-size", "0",
                 "--progress", "none"])
    assert code == 2 and "--pool-size must be at least 1" in capsys.readouterr().err


def test_merge_of_loops_run_as_separate_processes(load_script, tmp_path):
    merge = load_script("labelling/merge")

    def loop(folder, seeds, **changed):
        rows = [{"seed": s, "strategy": st, "round": 0, "n_labeled": 4, "dice": 0.5 + 0.01 * s + (0.02 if st == "uncertainty" else 0),
                 "case_dice": {"a": 0.5, "b": 0.4 + 0.01 * s}} for s in seeds for st in ("random", "uncertainty")]
        settings = {"dataset": "d.json", "budgets": [4], "seeds": seeds, "seconds": 10.0, **changed}
        write_labelling_results(rows, folder, settings)
        return folder

    a, b = loop(tmp_path / "a", [0, 1]), loop(tmp_path / "b", [2])
    paths = merge.merge([a, b], tmp_path / "all")
    doc = json.loads(paths["json"].read_text())
    assert doc["settings"]["seeds"] == [0, 1, 2] and doc["settings"]["seconds"] == 20.0
    (test,) = doc["paired_tests"]
    assert test["seeds"] == 3 and test["wins"] == 3 and test["t_test_p"] is None  # identical differences
    assert "| 4 | uncertainty | 3 |" in paths["markdown"].read_text()
    with pytest.raises(SystemExit, match="seed 2 is in both"):
        merge.merge([b, loop(tmp_path / "c", [2])], tmp_path / "x")
    with pytest.raises(SystemExit, match="settings differ .* in dataset"):
        merge.merge([a, loop(tmp_path / "d", [3], dataset="other.json")], tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
