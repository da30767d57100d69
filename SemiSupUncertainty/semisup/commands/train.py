"""``semisup train``: train a model into a run folder."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Sequence

from ..config import ConfigError, load_config
from ..engine import Emitter, FileSink
from ..engine.runfolder import acquire_run_lock
from ..engine.runlog import TrainLog
from .exit_codes import EXIT_OK

__all__ = ["parse_sets", "run"]


def parse_sets(items: Sequence[str]) -> dict[str, str]:
    """``["train.lr=0.01"]`` -> ``{"train.lr": "0.01"}``; the config casts the values."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value
    return out


def run(args: argparse.Namespace, emit: Emitter) -> int:
    from ..engine.trainer import Trainer

    run_dir = Path(args.run_dir)
    config = args.config or (run_dir / "config.yaml")
    cfg = load_config(config, parse_sets(args.set))
    if not cfg.data.dataset:
        raise ConfigError(f"{config}: data.dataset is empty: name the dataset.json to train on")
    # Refusals come before anything is written to the folder, its logs included.
    trainer = Trainer(cfg, run_dir, emit, resume=args.resume)
    trainer.prepare()
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun rank 0 alone writes the folder
        # Held until the emitter closes: the run's last event lands before another process may write.
        emit.sinks.append(acquire_run_lock(run_dir))
        # Inserted before the lock so they close (flush) before it is released.
        emit.sinks.insert(len(emit.sinks) - 1, FileSink(run_dir / "progress.jsonl"))
        emit.sinks.insert(len(emit.sinks) - 1, TrainLog(run_dir / "train.log"))
    try:
        trainer.fit()
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:  # a failed write names no file: name the folder
            raise OSError(exc.errno, exc.strerror, str(run_dir)) from None
        raise
    return EXIT_OK
