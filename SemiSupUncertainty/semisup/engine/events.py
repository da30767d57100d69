"""Progress events and the sinks that consume them (see docs/worker-protocol.md).

What an event may hold is defined once, in ``semisup.protocol.events``; the emitter
checks every record against it when ``SEMISUP_VALIDATE_EVENTS=1`` (the test suite
sets it), so an event or field that is not in the schema fails the tests.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import IO, Any, Protocol

from ..protocol.events import EventSchemaError, validate

#: Environment switch that makes the emitter check each event against the schema.
VALIDATE_ENV = "SEMISUP_VALIDATE_EVENTS"

__all__ = ["ProgressSink", "JsonLinesSink", "FileSink", "BarSink", "TensorBoardSink", "Emitter"]


class ProgressSink(Protocol):
    def emit(self, event: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def _clean(value: Any) -> Any:
    # JSON has no NaN/inf: a reader in another language must not choke on them.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class JsonLinesSink:
    """One JSON object a line on a stream (stdout for the Slicer worker), flushed."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout

    def emit(self, event: dict[str, Any]) -> None:
        self.stream.write(json.dumps(_clean(event)) + "\n")
        self.stream.flush()

    def close(self) -> None:
        pass


class FileSink(JsonLinesSink):
    """Appends the events to ``progress.jsonl`` in the run folder."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        super().__init__(open(path, "a", encoding="utf-8"))

    def close(self) -> None:
        self.stream.close()


class BarSink:
    """A tqdm progress bar on stderr for people at a terminal."""

    def __init__(self) -> None:
        self.bar = None

    def emit(self, event: dict[str, Any]) -> None:
        from tqdm import tqdm

        kind = event.get("event")
        if kind == "start":
            self.bar = tqdm(total=event["iterations"], initial=event["start_iteration"], file=sys.stderr, unit="it")
        elif kind == "iteration" and self.bar is not None:
            self.bar.update(event["iteration"] - self.bar.n)
            self.bar.set_postfix(loss=f"{event['loss']:.4f}", lr=f"{event['lr']:.2e}")
        elif kind == "validation" and self.bar is not None:
            self.bar.write(f"iteration {event['iteration']}: validation Dice {event['dice']:.4f} (best {event['best_dice']:.4f})")
        elif kind in ("done", "cancelled", "error"):
            self.close()
            if kind == "error":
                print(f"error: {event['message']}", file=sys.stderr)
            elif kind == "cancelled":
                print(f"cancelled at iteration {event['iteration']}; resume with --resume", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class TensorBoardSink:
    """TensorBoard event files of the training events, beside ``progress.jsonl``.

    Scalars by iteration: ``train/loss``, ``train/<term>`` (each logged loss term),
    ``train/lr``, ``validation/dice`` and ``validation/dice_<class>``. PyTorch's
    ``SummaryWriter`` writes them; it needs the optional ``tensorboard`` package.
    """

    def __init__(self, log_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            from ..config import ConfigError

            raise ConfigError(
                "train.tensorboard is on but the 'tensorboard' package is not installed: pip install tensorboard"
            ) from None
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def emit(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "iteration":
            step = int(event["iteration"])
            self.writer.add_scalar("train/loss", event["loss"], step)
            for name, value in (event.get("losses") or {}).items():
                self.writer.add_scalar(f"train/{name}", value, step)
            self.writer.add_scalar("train/lr", event["lr"], step)
        elif kind == "validation":
            step = int(event["iteration"])
            self.writer.add_scalar("validation/dice", event["dice"], step)
            for name, value in (event.get("dice_per_class") or {}).items():
                self.writer.add_scalar(f"validation/dice_{name}", value, step)
        elif kind in ("checkpoint", "done", "cancelled"):
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Emitter:
    """Stamps events with the time and fans them out to every sink.

    With ``validate`` (default: the ``SEMISUP_VALIDATE_EVENTS`` environment switch),
    an event that does not match ``semisup.protocol.events`` raises ``EventSchemaError``.
    """

    def __init__(self, sinks: list[ProgressSink] | None = None, validate: bool | None = None) -> None:
        self.sinks = list(sinks or [])
        self.validate = os.environ.get(VALIDATE_ENV) == "1" if validate is None else validate

    def __call__(self, event: str, **fields: Any) -> None:
        record = {"event": event, "time": round(time.time(), 3), **fields}
        if self.validate:
            problems = validate(_clean(record))
            if problems:
                raise EventSchemaError("progress event does not match the schema: " + "; ".join(problems))
        for sink in self.sinks:
            sink.emit(record)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
