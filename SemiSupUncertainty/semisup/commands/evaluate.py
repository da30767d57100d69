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

    if args.classes and args.dataset:
        raise ConfigError("--classes is for --labels; a dataset.json declares its own classes")
    if args.classes is not None and len(args.classes) < 2:
        raise ConfigError(f"--classes needs background and at least one class, got {args.classes}")
    summary = evaluate_predictions(
        args.predictions, dataset=args.dataset, split=args.split, labels_dir=args.labels, output_dir=args.output_dir,
        class_names=args.classes,
    )
    for name, stats in summary["mean"].items():
        print(f"{name}: {stats['mean']:.4f} +- {stats['std']:.4f} over {stats['n']} cases", file=sys.stderr)
    return EXIT_OK
