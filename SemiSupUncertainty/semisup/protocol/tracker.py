"""The state of one run as its events arrive: what a progress bar, a status line and a chart show.

Front ends (the Slicer module, scripts) feed the worker's stdout lines here; the run
folder's ``progress.jsonl`` replays the same way (all attempts of a run).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Iterable

from .events import Event, parse_line

__all__ = ["ProgressTracker", "format_duration"]

#: Seconds in a minute and an hour, for :func:`format_duration`.
_MINUTE, _HOUR = 60, 3600


def format_duration(seconds: float | None) -> str:
    """``"45 s"``, ``"3 min 20 s"``, ``"2 h 05 min"``; empty for unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return ""
    seconds = int(round(seconds))
    if seconds < _MINUTE:
        return f"{seconds} s"
    if seconds < _HOUR:
        return f"{seconds // _MINUTE} min {seconds % _MINUTE:02d} s"
    return f"{seconds // _HOUR} h {(seconds % _HOUR) // _MINUTE:02d} min"


class ProgressTracker:
    """Running state of a training or prediction.

    ``loss_history`` holds ``(iteration, loss, {component: value})`` and
    ``dice_history`` ``(iteration, dice)``; a resumed attempt (``start`` with
    ``start_iteration`` k) drops points after k, since those iterations are trained
    again, and bumps ``history_version`` so a chart knows to rebuild.
    """

    def __init__(self) -> None:
        self.phase = "waiting"  # waiting, training, done, cancelled, failed, predicting, predicted
        self.method = self.device = self.device_name = ""
        self.iteration = self.start_iteration = 0
        self.iterations: int | None = None
        self.loss: float | None = None
        self.losses: dict[str, float] = {}
        self.lr: float | None = None
        self.it_per_s: float | None = None
        self.eta_seconds: float | None = None
        self.dice: float | None = None
        self.dice_per_class: dict[str, float] = {}
        self.best_dice: float | None = None
        self.last_checkpoint = self.best_checkpoint = ""
        self.error_message = self.error_type = ""
        self.loss_history: list[tuple[int, float, dict[str, float]]] = []
        self.dice_history: list[tuple[int, float]] = []
        self.predicted: list[Event] = []
        self.predict_total: int | None = None
        self.scores_csv = ""
        self.warnings: list[str] = []  # "case: message" of each warning event (e.g. a predict input that failed)
        self.history_version = 0
        self.event_count = 0
        self._start_time: float | None = None

    # -- feeding -------------------------------------------------------------------
    def feed(self, line: str) -> Event | None:
        event = parse_line(line)
        if event is not None:
            self.update(event)
        return event

    def feed_lines(self, lines: Iterable[str]) -> list[Event]:
        return [e for e in (self.feed(line) for line in lines) if e is not None]

    @classmethod
    def from_file(cls, path: str | Path) -> "ProgressTracker":
        """Replay a run's ``progress.jsonl`` (every attempt), e.g. to show its curves before resuming."""
        tracker = cls()
        path = Path(path)
        if path.exists():
            with open(path, encoding="utf-8", errors="replace") as fh:
                tracker.feed_lines(fh)
        return tracker

    def update(self, event: Event) -> None:
        self.event_count += 1
        handler = getattr(self, f"_on_{event.name}", None)
        if handler is not None:  # an event with no bearing on the state (e.g. comparison)
            handler(event)

    def _on_start(self, e: Event) -> None:
        self.phase = "training"
        self.method, self.device, self.device_name = e.method, e.device, e.device_name
        self.iterations = e.iterations
        self.start_iteration = self.iteration = e.start_iteration or 0
        self._start_time = e.time or time.time()
        self.error_message = self.error_type = ""
        self.eta_seconds = None
        kept_loss = [p for p in self.loss_history if p[0] <= self.start_iteration]
        kept_dice = [p for p in self.dice_history if p[0] <= self.start_iteration]
        if len(kept_loss) != len(self.loss_history) or len(kept_dice) != len(self.dice_history):
            self.history_version += 1
        self.loss_history, self.dice_history = kept_loss, kept_dice

    def _on_iteration(self, e: Event) -> None:
        self.phase = "training"
        self.iteration = e.iteration
        self.iterations = e.iterations or self.iterations
        self.loss, self.losses, self.lr, self.it_per_s = e.loss, dict(e.losses), e.lr, e.it_per_s
        self.eta_seconds = e.eta_seconds if e.eta_seconds is not None else self._estimate_eta(e)
        if e.loss is not None:
            self.loss_history.append((e.iteration, e.loss, dict(e.losses)))

    def _on_validation(self, e: Event) -> None:
        self.dice, self.dice_per_class = e.dice, dict(e.dice_per_class)
        self.best_dice = e.best_dice if e.best_dice is not None else self.best_dice
        if e.dice is not None:
            self.dice_history.append((e.iteration or 0, e.dice))

    def _on_checkpoint(self, e: Event) -> None:
        if e.kind == "best":
            self.best_checkpoint = e.path
        else:
            self.last_checkpoint = e.path

    def _on_done(self, e: Event) -> None:
        self.phase = "done"
        self.iteration = e.iteration if e.iteration is not None else self.iteration
        self.best_dice = e.best_dice if e.best_dice is not None else self.best_dice
        self.best_checkpoint = e.best_checkpoint or self.best_checkpoint
        self.last_checkpoint = e.last_checkpoint or self.last_checkpoint
        self.eta_seconds = 0.0

    def _on_cancelled(self, e: Event) -> None:
        self.phase = "cancelled"
        self.iteration = e.iteration if e.iteration is not None else self.iteration
        self.last_checkpoint = e.checkpoint or self.last_checkpoint
        self.eta_seconds = None

    def _on_error(self, e: Event) -> None:
        self.phase = "failed"
        self.error_message, self.error_type = e.message, e.type

    def _on_warning(self, e: Event) -> None:
        self.warnings.append(f"{e.case}: {e.message}" if e.case else e.message)

    def _on_predict_start(self, e: Event) -> None:
        self.phase = "predicting"
        self.predict_total = e.cases
        self.device = e.device or self.device
        self._start_time = e.time or time.time()

    def _on_predicted(self, e: Event) -> None:
        self.phase = "predicting"
        self.predicted.append(e)
        self.predict_total = e.total or self.predict_total

    def _on_predict_done(self, e: Event) -> None:
        self.phase = "predicted"
        self.scores_csv = e.scores_csv

    def _estimate_eta(self, e: Event) -> float | None:
        if not self.iterations:
            return None
        remaining = max(self.iterations - e.iteration, 0)
        rate = e.it_per_s
        if not rate and self._start_time and e.time and e.iteration > self.start_iteration:
            elapsed = e.time - self._start_time
            rate = (e.iteration - self.start_iteration) / elapsed if elapsed > 0 else None
        return remaining / rate if rate else None

    # -- reading -------------------------------------------------------------------
    def fraction(self) -> float:
        """0..1 for a progress bar (training iterations or predicted volumes)."""
        if self.phase in ("predicting", "predicted"):
            total = self.predict_total or 0
            return 1.0 if self.phase == "predicted" else (len(self.predicted) / total if total else 0.0)
        if self.phase == "done":
            return 1.0
        if not self.iterations:
            return 0.0
        return max(0.0, min(1.0, self.iteration / self.iterations))

    def status_text(self) -> str:
        """One line for a status label, in plain words."""
        if self.phase == "waiting":
            return "Starting the worker process..."
        if self.phase == "failed":
            return f"Failed: {self.error_message}" if self.error_message else "Failed."
        if self.phase in ("predicting", "predicted"):
            total = self.predict_total or "?"
            done = "Prediction finished" if self.phase == "predicted" else "Predicting"
            return f"{done}: {len(self.predicted)}/{total} volume(s)" + (f" on {self.device}" if self.device else "")
        parts = [f"Iteration {self.iteration}/{self.iterations or '?'}"]
        if self.loss is not None:
            loss = f"loss {self.loss:.4f}"
            if self.losses:
                loss += " (" + ", ".join(f"{k} {v:.3g}" for k, v in self.losses.items()) + ")"
            parts.append(loss)
        if self.dice is not None:
            parts.append(f"Dice {self.dice:.3f}" + (f" (best {self.best_dice:.3f})" if self.best_dice is not None else ""))
        if self.phase == "training" and self.eta_seconds is not None:
            parts.append(f"ETA {format_duration(self.eta_seconds)}")
        if self.phase == "done":
            parts.insert(0, "Finished")
        elif self.phase == "cancelled":
            parts.insert(0, "Cancelled (resume continues from the last checkpoint)")
        return " · ".join(parts)
