#!/usr/bin/env python3
"""Label source (issue 14 item 4): the MC mean's argmax against the dropout-off pass's, pooled.

Reads the ``predict_options.json`` of several ``bench_predict_options.py`` runs (each
a trained model on its fold's *validation* cases, never a report set) and compares,
case by case over all of them, the Dice of the label taken from the seeded MC mean
with the label of the dropout-off pass, linearly restored, without and with the
largest connected component; paired Wilcoxon test over the cases.

Example::

    python benchmarks/label_source.py runs/label_source/*/predict_options.json --out benchmarks/results/label_source_la.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness import command_header, write_json

SETTING = "gaussian_shared"
#: The report split that bench_la / bench_acdc write per fold: never used to choose.
REPORT_SPLIT = "dataset_report.json"


def case_dice(row: dict, key: str) -> float:
    """Mean foreground Dice of one case for one label variant (``dice_<source>_<restore>``)."""
    values = list(row["settings"][SETTING][key].values())
    return sum(values) / len(values)


def compare(files: list[Path]) -> dict:
    from scipy.stats import wilcoxon

    rows = []
    for path in files:
        data = json.loads(Path(path).read_text())
        if Path(data.get("dataset", "")).name == REPORT_SPLIT:
            raise SystemExit(f"{path}: measured on a fold's report set ({REPORT_SPLIT}); the label source is chosen "
                             "on validation cases only")
        rows += [(str(path), r) for r in data["per_case"] if SETTING in r["settings"]]
    out = {"models": sorted({p for p, _ in rows}), "cases": len(rows), "setting": SETTING, "restores": {}}
    for restore in ("linear", "linear_lcc"):
        mc = [case_dice(r, f"dice_mc_mean_{restore}") for _, r in rows]
        off = [case_dice(r, f"dice_dropout_off_{restore}") for _, r in rows]
        diffs = [b - a for a, b in zip(mc, off)]
        out["restores"][restore] = {
            "mc_mean": sum(mc) / len(mc),
            "dropout_off": sum(off) / len(off),
            "dropout_off_better": sum(d > 0 for d in diffs),
            "p": float(wilcoxon(diffs).pvalue) if any(diffs) else 1.0,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", type=Path, help="predict_options.json files")
    ap.add_argument("--out", type=Path, help="write the comparison here (JSON)")
    args = ap.parse_args()
    result = compare(args.files)
    print(f"{result['cases']} cases from {len(result['models'])} model(s)\n")
    print("| restore | MC mean Dice % | dropout-off Dice % | dropout-off better | p (Wilcoxon) |\n|---|---|---|---|---|")
    for restore, r in result["restores"].items():
        print(f"| {restore} | {r['mc_mean'] * 100:.2f} | {r['dropout_off'] * 100:.2f} | {r['dropout_off_better']}/{result['cases']} | {r['p']:.3g} |")
    if args.out:
        write_json(args.out, {**command_header(), **result})


if __name__ == "__main__":
    main()
