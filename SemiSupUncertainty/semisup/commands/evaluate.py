"""``semisup evaluate``: score predictions against reference labels."""

from __future__ import annotations

import argparse
import sys

from ..config import ConfigError
from ..engine import Emitter
from .exit_codes import EXIT_OK

__all__ = ["run"]


def run(args: argparse.Namespace, emit: Emitter) -> int:
    from ..measure.evaluate import evaluate_predictions
    from ..measure.uncertainty_quality import DEFAULT_MARGIN_MM

    if args.worst < 0:
        raise ConfigError(f"--worst must be 0 or more, got {args.worst}")
    if args.worst and not args.dataset:
        raise ConfigError("--worst draws the images of the cases: give --dataset")
    if args.classes and args.dataset:
        raise ConfigError("--classes is for --labels; a dataset.json declares its own classes")
    if args.classes is not None and len(args.classes) < 2:
        raise ConfigError(f"--classes needs background and at least one class, got {args.classes}")
    summary = evaluate_predictions(
        args.predictions, dataset=args.dataset, split=args.split, labels_dir=args.labels, output_dir=args.output_dir,
        class_names=args.classes, margin_mm=DEFAULT_MARGIN_MM if args.margin_mm is None else args.margin_mm,
        worst=args.worst,
    )
    for name, stats in summary["mean"].items():
        print(f"{name}: {stats['mean']:.4f} +- {stats['std']:.4f} over {stats['n']} cases", file=sys.stderr)
    unc = summary.get("uncertainty", {})
    for key in ("auroc", "ece", "ueo", "filtered_dice_auc"):
        value = unc.get(key)
        text = f"{value['mean']:.4f} over {value['n']} cases" if value else f"not computed ({unc['reasons'].get(key)})"
        print(f"uncertainty {key}: {text}", file=sys.stderr)
    for item in summary.get("worst_cases", []):
        print(f"worst {item['rank']}: {item['case']} Dice {item['dice']:.4f}, z = {item['axial_index']}: {item['figure']}", file=sys.stderr)
    rho = unc.get("ranking_spearman")
    print(f"uncertainty ranking_spearman: {f'{rho:.4f}' if rho is not None else 'not computed (' + str(unc['reasons'].get('ranking_spearman')) + ')'}", file=sys.stderr)
    return EXIT_OK
