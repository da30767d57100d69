"""Command line: ``semisup train | predict | calibrate | evaluate | compare | export | demo | plan | simulate-labelling``.

This module only parses: each verb's behaviour is ``semisup.commands.<verb>.run``.

The Slicer module runs the same commands in a worker process; the contract is
docs/worker-protocol.md (progress as JSON lines on stdout, exit codes).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys
from pathlib import Path
from typing import Sequence

from . import commands
from ._version import __version__
from .commands import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_ERROR, EXIT_OK
from .commands.signals import StartupCancelled, install_cancel_handlers, restore_handlers
from .config import ConfigError
from .data import DataError
from .engine import BarSink, CheckpointError, Emitter, JsonLinesSink, TrainingCancelled, TrainingDiverged

__all__ = ["main", "EXIT_OK", "EXIT_ERROR", "EXIT_BAD_INPUT", "EXIT_CANCELLED"]

BAD_INPUT = (ConfigError, DataError, CheckpointError)
#: File-system errors the user can fix with another path or permissions (exit 2);
#: any other OSError (a full disk, an I/O error) exits 1. Both without a traceback.
PATH_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST}


def _emitter(progress: str) -> Emitter:
    sinks = []
    if progress == "json":
        sinks.append(JsonLinesSink(sys.stdout))
    elif progress == "bar":
        sinks.append(BarSink())
    return Emitter(sinks)


def _command(name: str):
    """The ``run`` of ``semisup.commands.<name>``, imported when the verb runs."""

    def run(args: argparse.Namespace, emit: Emitter) -> int:
        module = importlib.import_module(f"{commands.__name__}.{name}")
        return module.run(args, emit)

    return run


def build_parser() -> argparse.ArgumentParser:
    from .methods import method_names

    parser = argparse.ArgumentParser(prog="semisup", description="Uncertainty-aware semi-supervised segmentation.")
    parser.add_argument("--version", action="version", version=f"semisup {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    def progress_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--progress",
            choices=["auto", "json", "bar", "none"],
            default="auto",
            help="json: JSON lines on stdout (docs/worker-protocol.md); bar: progress bar on stderr; "
            "auto: json when stdout is not a terminal",
        )

    p = sub.add_parser("train", help="train a model; progress and checkpoints go to the run folder")
    p.add_argument("--config", type=Path, help="YAML config (default: RUN_DIR/config.yaml)")
    p.add_argument("--run-dir", required=True, type=Path, help="run folder (created if needed)")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoints/last.pt when it exists")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.iterations=500")
    progress_flag(p)
    p.set_defaults(func=_command("train"))

    p = sub.add_parser("predict", help="predict label maps and uncertainty maps on the inputs' own grids")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run-dir", type=Path, help="trained run folder (uses checkpoints/best.pt)")
    src.add_argument("--checkpoint", type=Path, help="a checkpoint file")
    p.add_argument("--input", nargs="+", required=True, type=Path, help="images (NRRD, NIfTI, MHA, ...)")
    p.add_argument("--output-dir", type=Path, help="default: RUN_DIR/predictions")
    p.add_argument("--mc-samples", type=int, help="MC-dropout samples T >= 1 (default: the run's inference.mc_samples)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1")
    p.add_argument("--save-probabilities", action="store_true", default=None, help="also write class probabilities")
    p.add_argument("--largest-component", action="store_true", help="keep the largest connected component per class")
    p.add_argument("--seed", type=int, help="seed of the MC-dropout draws (default: the run's inference.seed)")
    p.add_argument("--flip-axes", type=int, nargs="*", metavar="AXIS",
                   help="test-time flips along these image axes (0 x, 1 y, 2 z; every combination is averaged)")
    p.add_argument("--no-calibration", action="store_true", help="ignore the run's calibration.json (temperature scaling)")
    progress_flag(p)
    p.set_defaults(func=_command("predict"))

    p = sub.add_parser("calibrate", help="fit temperature scaling on held-out cases; predict applies it")
    p.add_argument("--run-dir", required=True, type=Path, help="trained run folder; calibration.json is written there")
    p.add_argument("--folds", type=int, default=2, help="cross-fitting folds when the run has no validation cases")
    p.add_argument("--fold-iterations", type=int, help="training iterations per cross-fitting model (default: the run's)")
    p.add_argument("--margin-mm", type=float, help="fit on the foreground dilated by this (mm; default 5, as evaluate)")
    p.add_argument("--dataset", type=Path,
                   help="fit on this dataset.json's 'validation' cases (default: the run's dataset)")
    p.add_argument("--max-voxels", type=int, help="voxels per case at most (default 200000)")
    p.add_argument("--mc-samples", type=int, help="MC-dropout draws per case (default: the run's, as predict uses)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1")
    progress_flag(p)
    p.set_defaults(func=_command("calibrate"))

    p = sub.add_parser("evaluate", help="Dice, Jaccard, HD95, ASD per class against reference labels")
    p.add_argument("--predictions", required=True, type=Path, help="folder of <case>_label.nrrd files")
    ref = p.add_mutually_exclusive_group(required=True)
    ref.add_argument("--dataset", type=Path, help="dataset.json naming the reference labels")
    ref.add_argument("--labels", type=Path, help="folder of reference label files named like the cases")
    p.add_argument("--classes", nargs="+", metavar="NAME", help="class names, background first (with --labels; default: the values found, which must be 0..K-1)")
    p.add_argument("--split", default="validation", choices=["training", "validation", "test"])
    p.add_argument("--output-dir", type=Path, help="where metrics.csv/json go (default: the predictions folder)")
    p.add_argument("--worst", type=int, default=0, metavar="N",
                   help="write worst/<rank>_<case>.png for the N cases of lowest Dice (needs --dataset)")
    p.add_argument("--margin-mm", type=float,
                   help="uncertainty scores look at the prediction/reference foreground dilated by this (mm; default 5)")
    progress_flag(p)
    p.set_defaults(func=_command("evaluate"))

    p = sub.add_parser("compare", help="paired per-case comparison of two evaluated runs (Wilcoxon signed-rank)")
    p.add_argument("--baseline", required=True, type=Path, nargs="+",
                   help="metrics.json of the baseline (or its folder); several (seeds) are averaged per case")
    p.add_argument("--candidate", required=True, type=Path, nargs="+",
                   help="metrics.json of the candidate (or its folder); several (seeds) are averaged per case")
    p.add_argument("--metric", nargs="+", default=["dice"], choices=["dice", "jaccard", "hd95", "asd"])
    progress_flag(p)
    p.set_defaults(func=_command("compare"))

    p = sub.add_parser("export", help="the trained model as TorchScript, a MONAI bundle folder or ONNX")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run-dir", type=Path, help="trained run folder (uses checkpoints/best.pt)")
    src.add_argument("--checkpoint", type=Path, help="a checkpoint file")
    p.add_argument("--format", required=True, choices=["torchscript", "bundle", "onnx"])
    p.add_argument("--output", required=True, type=Path, help="file (torchscript, onnx) or new folder (bundle)")
    progress_flag(p)
    p.set_defaults(func=_command("export"))

    p = sub.add_parser("plan", help="fingerprint a dataset and write an editable run configuration for it")
    p.add_argument("dataset", type=Path, help="dataset.json (or its folder)")
    p.add_argument("--output", type=Path, help="config YAML to write (and <name>_fingerprint.json beside it); default stdout")
    p.add_argument("--budget-minutes", type=float, help="training time to plan for (default: 60 on a CPU, the paper budget on a GPU)")
    p.add_argument("--device", default="auto", help="plan for: auto (this machine), cpu, cuda")
    p.add_argument("--max-cases", type=int, default=20, help="labeled cases read for intensities and class sizes")
    p.add_argument("--progress", choices=["auto", "json", "bar", "none"], default="none", help="progress events (default none)")
    p.set_defaults(func=_command("plan"))
    p = sub.add_parser(
        "simulate-labelling",
        help="simulated labelling loop: train, predict the pool, pick k by a strategy, reveal labels, repeat",
        description="The dataset's labeled 'training' cases are the pool (labels hidden until picked); its "
        "'validation' cases (else labeled 'test' cases) are the fixed held-out set. Writes labelling.csv, "
        "labelling.json (curve, paired tests per budget), labelling.md (the same as a table) and labelling.png under --output.",
    )
    p.add_argument("--config", required=True, type=Path, help="YAML config of every round's training")
    p.add_argument("--dataset", type=Path, help="dataset.json (default: the config's data.dataset)")
    p.add_argument("--output", required=True, type=Path, help="folder of the rounds and the results")
    p.add_argument("--strategies", nargs="+", default=["random", "uncertainty", "diverse"],
                   choices=["random", "uncertainty", "diverse"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--start", type=int, default=4, help="labeled volumes before the first round")
    p.add_argument("--step", type=int, default=4, help="volumes picked per round (k)")
    p.add_argument("--budget", type=int, default=16, help="labeled volumes after the last round")
    p.add_argument("--hold-out", type=int, default=0, metavar="N",
                   help="held-out set = the last N labeled cases of the list (added to any 'validation' list)")
    p.add_argument("--pool-size", type=int, metavar="N",
                   help="candidates = the first N labeled cases (file order, after --hold-out); default: all")
    p.add_argument("--from-scratch", action="store_true", help="train every round from scratch (default: warm start)")
    p.add_argument("--mc-samples", type=int, help="MC-dropout samples of the pool and held-out predictions")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.iterations=500")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1")
    progress_flag(p)
    p.set_defaults(func=_command("simulate_labelling"))

    p = sub.add_parser("demo", help="synthetic data, a few CPU minutes of training, predictions, uncertainty and a report")
    p.add_argument("--output", type=Path, default=Path("semisup-demo"), help="demo folder (default: ./semisup-demo)")
    p.add_argument("--iterations", type=int, help="training iterations (default: about three CPU minutes)")
    p.add_argument("--method", default="uamt", choices=method_names())
    progress_flag(p)
    p.set_defaults(func=_command("demo"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    previous_handlers = install_cancel_handlers()  # a stop request while starting is a cancel (exit 3), not a crash
    emit: Emitter | None = None
    progress = "none"
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
        if args.progress == "auto":
            args.progress = "bar" if sys.stdout.isatty() else "json"
        progress = args.progress
        emit = _emitter(progress)
        return args.func(args, emit)
    except TrainingCancelled:
        return EXIT_CANCELLED
    except StartupCancelled as exc:
        emit = emit or _emitter("json" if not sys.stdout.isatty() else "none")
        _safe_emit(emit, "cancelled", iteration=None, checkpoint=None, reason=str(exc))
        print(f"cancelled: {exc}", file=sys.stderr)
        return EXIT_CANCELLED
    except BAD_INPUT as exc:
        _report(emit, progress, str(exc), exc)
        return EXIT_BAD_INPUT
    except OSError as exc:
        _report(emit, progress, _explain_os_error(exc), exc)
        return EXIT_BAD_INPUT if exc.errno in PATH_ERRNOS else EXIT_ERROR
    except (TrainingDiverged, MemoryError) as exc:
        _report(emit, progress, _explain(exc), exc)
        return EXIT_ERROR
    except Exception as exc:  # the front end must see a message, not a silent exit
        _report(emit, progress, _explain(exc), exc)
        logging.getLogger("semisup").exception("unexpected failure")
        return EXIT_ERROR
    finally:
        if emit is not None:
            try:
                emit.close()
            except OSError:
                pass
        restore_handlers(previous_handlers)


def _safe_emit(emit: Emitter | None, event: str, **fields) -> None:
    """Emit, ignoring sinks that fail (the disk that just filled up holds the log too)."""
    if emit is None:
        return
    for sink in emit.sinks:
        try:
            Emitter([sink])(event, **fields)
        except (OSError, ValueError):
            pass


def _report(emit: Emitter | None, progress: str, message: str, exc: BaseException) -> None:
    _safe_emit(emit, "error", message=message, type=type(exc).__name__)
    if progress != "bar" or emit is None:  # the bar sink prints errors itself
        print(f"error: {message}", file=sys.stderr)


def _explain_os_error(exc: OSError) -> str:
    """``"<path>: <reason>"`` in one line, e.g. ``"run/checkpoints: Read-only file system"``."""
    reason = exc.strerror or type(exc).__name__
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        reason += " (free disk space or choose another folder; the last complete checkpoint is intact)"
    where = exc.filename if exc.filename is not None else ""
    if exc.filename2 is not None:
        where = f"{where} -> {exc.filename2}"
    return f"{where}: {reason}" if where else reason


def _explain(exc: BaseException) -> str:
    text = str(exc)
    if "out of memory" in text.lower() or isinstance(exc, MemoryError):
        return (
            f"out of memory ({text.splitlines()[0] if text else type(exc).__name__}): lower data.patch_size, "
            "train.labeled_batch/unlabeled_batch or method.params.mc_samples, or set data.target_spacing coarser"
        )
    return text or type(exc).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
