"""``semisup evaluate``: score predictions against reference labels."""

from __future__ import annotations

import argparse
import sys

from ..engine import Emitter
from .exit_codes import EXIT_OK

__all__ = ["run"]


def run(args: argparse.Namespace, emit: Emitter) -> int:
    from ..measure.evaluate import evaluate_predictions

    summary = evaluate_predictions(args.predictions, dataset=args.dataset, split=args.split, labels_dir=args.labels, output_dir=args.output_dir)
    for name, stats in summary["mean"].items():
        print(f"{name}: {stats['mean']:.4f} +- {stats['std']:.4f} over {stats['n']} cases", file=sys.stderr)
    return EXIT_OK
