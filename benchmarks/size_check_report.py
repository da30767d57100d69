#!/usr/bin/env python3
"""How well predict's size check finds the failed predictions of a cross-validation sweep.

For every result of a K-fold ``results.json`` (bench_la / bench_acdc ``--folds``) this
reads the fold's training ``dataset.json`` (the labeled volume ranges, as training
records them: ``semisup.data.label_sizes.labeled_volume_range``) and the predicted
label files, applies the same check predict applies (``size_check``), and counts per
method: the failures (Dice under ``--failure``) flagged, and the good predictions
flagged (false alarms). The labeled ranges come from training data only; the Dice from
the report cases' ground truth, which the check never sees.

Example::

    python benchmarks/size_check_report.py benchmarks/results/cv_la_cpu.json --runs runs/cv_la \\
        --out benchmarks/results/size_check_la.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import SimpleITK as sitk

from harness import LIBRARY, read_results, write_json  # noqa: F401  (LIBRARY: the checkout's library first)

from semisup.data import DatasetSpec
from semisup.data.label_sizes import SIZE_CHECK_FACTOR, labeled_volume_range, size_check


def _fold_folder(runs: Path, split: dict) -> Path:
    return runs / f"fold{int(split['fold'])}of{int(split['folds'])}"


def _training_spec(fold: Path) -> DatasetSpec:
    # bench_acdc writes dataset_train.json, bench_la dataset.json.
    for name in ("dataset_train.json", "dataset.json"):
        if (fold / name).is_file():
            return DatasetSpec.from_json(fold / name)
    raise FileNotFoundError(f"{fold}: no dataset_train.json or dataset.json")


def _predictions(fold: Path, method: str, seed: int) -> Path:
    found = sorted(p for p in fold.glob(f"{method}-s{seed}*/predictions") if p.parent.name.split("-s")[0] == method)
    if len(found) != 1:
        raise FileNotFoundError(f"{fold}: expected one {method}-s{seed}*/predictions folder, found {[str(p) for p in found]}")
    return found[0]


def check_sweep(results: dict, runs: Path, methods: list[str], seed: int, failure: float, factor: float,
                folds: list[int] | None = None) -> dict:
    """Per method: counts and every flagged or failed case (of ``folds`` only, when given)."""
    ranges_of: dict[Path, dict] = {}
    out: dict[str, dict] = {}
    for r in results.values():
        split = r.get("split") or {}
        if not split.get("folds") or r.get("method") not in methods or int(r.get("seed", -1)) != seed:
            continue
        if folds is not None and int(split["fold"]) not in folds:
            continue
        fold = _fold_folder(runs, split)
        if fold not in ranges_of:
            spec = _training_spec(fold)
            ranges_of[fold] = {"ranges": labeled_volume_range(spec), "classes": [spec.labels[c] for c in sorted(spec.labels)]}
        ranges, classes = ranges_of[fold]["ranges"], ranges_of[fold]["classes"]
        pred = _predictions(fold, r["method"], seed)
        m = out.setdefault(r["method"], {"predictions": 0, "failures": 0, "failures_flagged": 0, "good": 0,
                                         "good_flagged": 0, "cases": []})
        for case, dice in sorted(r["per_case_dice"].items()):
            label = sitk.ReadImage(str(pred / f"{case}_label.nrrd"))
            volumes, notes = size_check(sitk.GetArrayViewFromImage(label), label.GetSpacing(), classes, ranges, factor)
            failed = float(dice) < failure
            m["predictions"] += 1
            m["failures" if failed else "good"] += 1
            m["failures_flagged" if failed else "good_flagged"] += bool(notes)
            if failed or notes:
                m["cases"].append({"fold": int(split["fold"]), "case": case, "dice": float(dice),
                                   "predicted_ml": volumes, "flags": notes})
    return out


def table(summary: dict) -> str:
    lines = ["| method | predictions | failures (Dice < 0.5) flagged | good predictions flagged |", "|---|---|---|---|"]
    for method, m in summary.items():
        lines.append(f"| {method} | {m['predictions']} | {m['failures_flagged']} of {m['failures']} | "
                     f"{m['good_flagged']} of {m['good']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="a K-fold sweep's results.json")
    ap.add_argument("--runs", type=Path, required=True, help="the sweep's --out folder (fold<k>of<K>/<method>-s<seed>*/predictions)")
    ap.add_argument("--methods", nargs="+", default=["supervised", "uamt", "ucmt_sgd"])
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--failure", type=float, default=0.5, help="a prediction under this Dice counts as failed (default 0.5)")
    ap.add_argument("--factor", type=float, default=SIZE_CHECK_FACTOR, help=f"the check's factor (default {SIZE_CHECK_FACTOR:g}, predict's)")
    ap.add_argument("--folds", type=int, nargs="+", help="only these folds (e.g. those predicted after the factor was fixed)")
    ap.add_argument("--out", type=Path, help="write the counts and the flagged/failed cases here (JSON)")
    args = ap.parse_args()
    summary = check_sweep(read_results(args.results), args.runs, args.methods, args.seed, args.failure, args.factor, args.folds)
    print(table(summary))
    for method, m in summary.items():
        for c in m["cases"]:
            flags = "; ".join(c["flags"]) or "not flagged"
            print(f"{method} fold {c['fold']} {c['case']}: Dice {c['dice']:.3f}: {flags}")
    if args.out:
        write_json(args.out, {"factor": args.factor, "failure_dice": args.failure, "seed": args.seed, "folds": args.folds,
                              "results": str(args.results), "methods": summary})


if __name__ == "__main__":
    main()
