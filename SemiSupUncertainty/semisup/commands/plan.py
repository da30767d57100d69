"""``semisup plan DATASET``: a data fingerprint turned into an editable run configuration."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from ..config import ConfigError
from ..engine import Emitter
from .exit_codes import EXIT_OK

__all__ = ["run", "plan_defaults"]


def plan_defaults(dataset: str | Path, budget_minutes: float | None = None, device: str | None = None,
                  max_cases: int = 20) -> dict:
    """The planned configuration of ``dataset`` as a plain dict (a front end's defaults).

    The Slicer module can start ``semisup plan DATASET --output PLAN.yaml`` in its worker
    and pass ``PLAN.yaml`` as the ``base`` of ``Logic.writeConfig``; in-process callers
    that may import torch use this function.
    """
    from ..data.fingerprint import dataset_fingerprint
    from ..data.plan import plan_from_fingerprint

    fp = dataset_fingerprint(dataset, max_cases=max_cases)
    return plan_from_fingerprint(fp, budget_minutes, device).config.to_dict()


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def run(args: argparse.Namespace, emit: Emitter) -> int:
    from ..data.fingerprint import dataset_fingerprint
    from ..data.plan import plan_from_fingerprint, plan_yaml

    dataset = Path(args.dataset)
    if dataset.is_dir():
        dataset = dataset / "dataset.json"
    if not dataset.exists():
        raise ConfigError(f"{dataset}: no dataset.json here; give the dataset folder or its dataset.json")
    if args.budget_minutes is not None and args.budget_minutes <= 0:
        raise ConfigError(f"--budget-minutes must be positive, got {args.budget_minutes}")
    fp = dataset_fingerprint(dataset, max_cases=args.max_cases, device=args.device)
    plan = plan_from_fingerprint(fp, args.budget_minutes, None if args.device in ("auto", None) else
                                 ("gpu" if args.device.startswith("cuda") else "cpu"))
    text = plan_yaml(plan, fp)
    output = args.output
    fp_path = None
    if output is None:
        sys.stdout.write(text)
    else:
        _atomic_write(Path(output), text)
        fp_path = Path(output).with_name(Path(output).stem + "_fingerprint.json")
        _atomic_write(fp_path, json.dumps(fp.to_dict(), indent=1))
    emit("plan", config=str(output) if output else None, fingerprint=str(fp_path) if fp_path else None,
         budget=plan.budget, method=plan.config.method.name, iterations=plan.config.train.iterations)
    return EXIT_OK
