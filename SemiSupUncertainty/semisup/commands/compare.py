"""``semisup compare``: paired per-case comparison of two evaluated runs."""

from __future__ import annotations

import argparse
import sys

from ..engine import Emitter
from .exit_codes import EXIT_OK

__all__ = ["run"]


def run(args: argparse.Namespace, emit: Emitter) -> int:
    from ..measure.compare import compare_metrics

    for metric in args.metric:
        result = compare_metrics(args.baseline, args.candidate, metric)
        emit("comparison", **result.as_dict())
        print(result.summary(), file=sys.stderr)
    return EXIT_OK
