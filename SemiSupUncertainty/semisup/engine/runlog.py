"""``train.log``: the human-readable record of a run, beside ``progress.jsonl``.

One line per progress event in plain words, plus the library's own log messages
(warnings about the data, checkpoints taken over, ...), each stamped with the time.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

__all__ = ["TrainLog", "describe_event"]

_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def describe_event(event: dict[str, Any]) -> str:
    """A progress event in one line of plain words."""
    kind = event.get("event", "?")
    if kind == "start":
        return (
            f"start: {event.get('method')} from iteration {event.get('start_iteration')} to {event.get('iterations')} "
            f"on {event.get('device_name') or event.get('device')}; {event.get('labeled_cases')} labeled, "
            f"{event.get('unlabeled_cases')} unlabeled, {event.get('validation_cases')} validation cases"
        )
    if kind == "iteration":
        return f"iteration {event.get('iteration')}/{event.get('iterations')}: loss {event.get('loss'):.4g}, lr {event.get('lr'):.3g}"
    if kind == "validation":
        return f"validation at iteration {event.get('iteration')}: Dice {event.get('dice'):.4f} (best {event.get('best_dice'):.4f})"
    if kind == "checkpoint":
        return f"checkpoint {event.get('kind')} at iteration {event.get('iteration')}: {event.get('path')}"
    if kind == "done":
        return f"done at iteration {event.get('iteration')} in {event.get('seconds', 0):.0f} s; best checkpoint {event.get('best_checkpoint')}"
    if kind == "cancelled":
        return f"cancelled at iteration {event.get('iteration')}; resume with --resume"
    if kind in ("error", "warning"):
        return f"{kind}: {event.get('message')}"
    fields = ", ".join(f"{k}={v}" for k, v in event.items() if k not in ("event", "time"))
    return f"{kind}: {fields}"


class TrainLog:
    """A progress sink appending ``train.log``; it also records the ``semisup`` loggers."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handler = logging.FileHandler(path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter(_FORMAT))
        self.handler.setLevel(logging.INFO)
        self.logger = logging.getLogger("semisup")
        self.logger.addHandler(self.handler)

    def emit(self, event: dict[str, Any]) -> None:
        level = {"error": logging.ERROR, "warning": logging.WARNING}.get(event.get("event"), logging.INFO)
        record = logging.LogRecord("semisup.run", level, __file__, 0, describe_event(event), None, None)
        if "time" in event:
            record.created = float(event["time"])
        self.handler.handle(record)

    def close(self) -> None:
        self.logger.removeHandler(self.handler)
        self.handler.close()
