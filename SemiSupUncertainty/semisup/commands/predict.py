"""``semisup predict``: label maps and uncertainty maps from a trained run."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import ConfigError
from ..engine import Emitter
from .exit_codes import EXIT_OK

__all__ = ["run"]


def run(args: argparse.Namespace, emit: Emitter) -> int:
    from ..engine.predict import load_trained, predict_files, resolve_checkpoint

    if args.mc_samples is not None and args.mc_samples < 1:
        raise ConfigError(f"--mc-samples (MC-dropout passes) must be >= 1, got {args.mc_samples}")
    out = args.output_dir or (Path(args.run_dir) / "predictions" if args.run_dir else None)
    if out is None:
        raise ConfigError("--output-dir is required with --checkpoint")
    ckpt = resolve_checkpoint(args.run_dir, args.checkpoint)
    model = load_trained(ckpt, args.device, calibration=not getattr(args, "no_calibration", False))
    if args.largest_component:
        model.cfg.inference.largest_component = True
    if getattr(args, "seed", None) is not None:
        model.cfg.inference.seed = int(args.seed)
    if getattr(args, "flip_axes", None) is not None:
        model.cfg.inference.flip_axes = [int(a) for a in args.flip_axes]
        model.cfg.validate(str(ckpt))  # axes outside the image: a clear message, exit 2
    try:
        predict_files(model, args.input, out, mc_samples=args.mc_samples, save_probabilities=args.save_probabilities, emit=emit)
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:  # a failed write names no file: name the folder
            raise OSError(exc.errno, exc.strerror, str(out)) from None
        raise
    return EXIT_OK
