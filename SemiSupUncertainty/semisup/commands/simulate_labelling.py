"""``semisup simulate-labelling``: measure label-picking strategies on a labeled dataset."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import ConfigError, load_config
from ..engine import Emitter
from .exit_codes import EXIT_OK
from .train import parse_sets

__all__ = ["run"]


def run(args: argparse.Namespace, emit: Emitter) -> int:
    from ..engine.labelling import LabellingPlan, simulate_labelling

    cfg = load_config(args.config, parse_sets(args.set))
    if args.dataset:
        cfg.data.dataset = str(Path(args.dataset).resolve())
    if not cfg.data.dataset:
        raise ConfigError(f"{args.config}: data.dataset is empty: name the dataset.json (or give --dataset)")
    plan = LabellingPlan(
        strategies=list(args.strategies),
        seeds=list(args.seeds),
        start=args.start,
        step=args.step,
        budget=args.budget,
        warm_start=not args.from_scratch,
        mc_samples=args.mc_samples,
        hold_out=args.hold_out,
        pool_size=args.pool_size,
    )
    paths = simulate_labelling(cfg, args.output, plan, emit=emit, device=args.device)
    print(f"labelling curve: {paths['figure']}; table: {paths['csv']}; paired tests: {paths['json']}", file=sys.stderr)
    return EXIT_OK
