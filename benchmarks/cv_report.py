#!/usr/bin/env python3
"""The cross-validation tables of a sweep's ``results.json`` (bench_la / bench_acdc ``--folds``).

Prints, in Markdown: one row per fold and method (seeds averaged per case, as the
pooled figures do) with the paired comparison against supervised-only on that fold;
the folds pooled (``harness.pooled_table``); and the seed spread where a fold ran
several seeds of a method (each seed's mean and worst case, and the standard deviation
of the means). Only results with a ``split`` of a K-fold run are read. ACDC pairs by
patient (``--pair-by patient``): its two frames are not independent cases.

Example::

    python benchmarks/cv_report.py benchmarks/results/cv_la_cpu.json
    python benchmarks/cv_report.py benchmarks/results/cv_acdc_cpu.json --pair-by patient
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Callable

from harness import case_summary, comparison_cell, paired_comparison, patient_of, pooled_table, read_results


def by_fold(results: dict) -> dict[tuple[int, str], dict[str, list[float]]]:
    """(fold, method) -> case -> the Dice of every seed."""
    out: dict[tuple[int, str], dict[str, list[float]]] = {}
    for r in results.values():
        split = r.get("split") or {}
        if not split.get("folds") or "per_case_dice" not in r:
            continue
        cases = out.setdefault((int(split["fold"]), r["method"]), {})
        for case, dice in r["per_case_dice"].items():
            cases.setdefault(case, []).append(float(dice))
    return out


def fold_table(results: dict, baseline: str = "supervised", group: Callable[[str], str] | None = None,
               group_unit: str = "patients") -> str:
    """One row per fold and method; with ``group`` the paired test is over ``group_unit``."""
    folds = by_fold(results)
    lines = ["| fold | method | seeds | cases | mean Dice % | median | worst | 5th pct | < 0.5 | vs supervised: better, mean diff, p |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (fold, method), cases in sorted(folds.items()):
        means = {c: sum(v) / len(v) for c, v in cases.items()}
        s = case_summary(list(means.values()))
        cmp = "-"
        base = folds.get((fold, baseline))
        if base is not None and method != baseline:
            vs = paired_comparison(means, {c: sum(v) / len(v) for c, v in base.items()}, group)
            cmp = comparison_cell(vs, group_unit if group else None)
        seeds = max(len(v) for v in cases.values())
        lines.append(f"| {fold} | {method} | {seeds} | {s['cases']} | {s['mean'] * 100:.2f} | {s['median'] * 100:.1f} | "
                     f"{s['worst'] * 100:.1f} | {s['p5'] * 100:.1f} | {s['under_0.5']} | {cmp} |")
    return "\n".join(lines)


def seed_table(results: dict) -> str:
    """Per fold and method with several seeds: each seed's mean and worst case, and the spread."""
    groups: dict[tuple[int, str], list[tuple[int, dict]]] = {}
    for r in results.values():
        split = r.get("split") or {}
        if split.get("folds") and "per_case_dice" in r:
            groups.setdefault((int(split["fold"]), r["method"]), []).append((int(r["seed"]), r))
    lines = ["| fold | method | seed: mean Dice % (worst case) | std of the means |", "|---|---|---|---|"]
    for (fold, method), runs in sorted(groups.items()):
        if len(runs) < 2:
            continue
        summaries = [(seed, case_summary(list(r["per_case_dice"].values()))) for seed, r in sorted(runs)]
        cells = ", ".join(f"{seed}: {s['mean'] * 100:.2f} ({s['worst'] * 100:.1f})" for seed, s in summaries)
        spread = statistics.stdev(s["mean"] * 100 for _, s in summaries)
        lines.append(f"| {fold} | {method} | {cells} | {spread:.2f} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def common_folds(results: dict, methods: list[str]) -> dict:
    """The results of ``methods`` on the folds where every one of them ran (pooled means
    of methods over different case sets are not comparable)."""
    ran: dict[str, set[int]] = {m: set() for m in methods}
    for r in results.values():
        split = r.get("split") or {}
        if split.get("folds") and r.get("method") in ran:
            ran[r["method"]].add(int(split["fold"]))
    folds = set.intersection(*ran.values()) if ran else set()
    return {k: r for k, r in results.items()
            if r.get("method") in ran and (r.get("split") or {}).get("folds") and int(r["split"]["fold"]) in folds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, help="a sweep's results.json")
    ap.add_argument("--methods", nargs="+", help="pool only these methods, over the folds where all of them ran")
    ap.add_argument("--pair-by", choices=["case", "patient"], default="case",
                    help="unit of the paired test: each case, or each patient (ACDC: the mean of its two frames)")
    args = ap.parse_args()
    results = read_results(args.results)
    group = patient_of if args.pair_by == "patient" else None
    print(fold_table(results, group=group))
    pooled = common_folds(results, args.methods) if args.methods else results
    print(pooled_table(pooled, "volumes" if group else "cases", group=group))
    seeds = seed_table(results)
    if seeds:
        print("\nSeed spread:\n")
        print(seeds)


if __name__ == "__main__":
    main()
