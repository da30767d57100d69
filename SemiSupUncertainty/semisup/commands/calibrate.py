"""``semisup calibrate``: fit temperature scaling for a trained run (``calibration.json``)."""

from __future__ import annotations

import argparse
import sys

from ..engine import Emitter
from .exit_codes import EXIT_OK

__all__ = ["run"]


def run(args: argparse.Namespace, emit: Emitter) -> int:
    from ..engine.calibrate import MAX_VOXELS_PER_CASE, calibrate_run
    from ..measure.uncertainty_quality import DEFAULT_MARGIN_MM

    doc = calibrate_run(
        args.run_dir,
        folds=args.folds,
        fold_iterations=args.fold_iterations,
        margin_mm=DEFAULT_MARGIN_MM if args.margin_mm is None else args.margin_mm,
        max_voxels_per_case=args.max_voxels or MAX_VOXELS_PER_CASE,
        device=args.device,
        mc_samples=args.mc_samples,
        dataset=args.dataset,
        emit=emit,
    )
    print(
        f"temperature {doc['temperature']:.4f} ({doc['fitted_on']}, {doc['voxels']} voxels): "
        f"NLL {doc['nll_before']:.4f} -> {doc['nll_after']:.4f}, ECE {doc['ece_before']:.4f} -> {doc['ece_after']:.4f}; "
        f"written to {args.run_dir}/calibration.json, applied by semisup predict",
        file=sys.stderr,
    )
    return EXIT_OK
