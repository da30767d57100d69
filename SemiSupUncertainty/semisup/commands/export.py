"""``semisup export``: a trained run as TorchScript, a MONAI bundle or ONNX."""

from __future__ import annotations

import argparse

from ..engine import Emitter
from .exit_codes import EXIT_OK

__all__ = ["run"]


def run(args: argparse.Namespace, emit: Emitter) -> int:
    from ..engine.export import export_model
    from ..engine.predict import load_trained, resolve_checkpoint

    ckpt = resolve_checkpoint(args.run_dir, args.checkpoint)
    model = load_trained(ckpt, "cpu")
    emit("export_start", format=args.format, checkpoint=str(ckpt))
    path = export_model(model, args.format, args.output)
    emit("export_done", format=args.format, output=str(path))
    return EXIT_OK
