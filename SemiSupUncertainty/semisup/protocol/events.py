"""The progress stream's schema: every event, its fields and their types, in one place.

The emitter (``semisup.engine.events.Emitter``) checks what it writes against this
schema when validation is on (the test suite turns it on), and every front end parses
the stream with :func:`parse_line`, so an event or a field is added here once and
both sides know it. docs/worker-protocol.md lists the same table; a test keeps the
two in step.

Registering a new event (see docs/DEVELOPING.md)::

    from semisup.protocol.events import register_event

    register_event(
        "review_start", "a review session begins",
        cases=("int", "volumes to review"),
        required=("cases",),
    )

This module imports nothing heavy (no torch, no numpy): the Slicer GUI imports it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = [
    "EventSchemaError",
    "FIELD_TYPES",
    "Field",
    "EventSpec",
    "EVENTS",
    "register_event",
    "event_spec",
    "Event",
    "parse_record",
    "parse_line",
    "validate",
]

class EventSchemaError(TypeError):
    """An event written that the schema does not allow: a programming error, never bad input
    (a TypeError, so that handlers of bad input or full disks never swallow it)."""


# -- field types ----------------------------------------------------------------
# Each type: (reader that coerces a JSON value or returns None when it cannot,
# default for an absent or unreadable value, check that a written value conforms).


def _read_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _read_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if math.isfinite(number) and number == int(number) else None


def _read_str(value: Any) -> str | None:
    return None if value is None or isinstance(value, (dict, list)) else str(value)


def _read_bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _read_float_map(value: Any) -> dict[str, float] | None:
    if not isinstance(value, dict):
        return None
    out = {str(k): _read_float(v) for k, v in value.items()}
    return {k: v for k, v in out.items() if v is not None}


def _read_str_map(value: Any) -> dict[str, str] | None:
    if not isinstance(value, dict):
        return None
    return {str(k): str(v) for k, v in value.items() if v is not None}


def _read_str_list(value: Any) -> list[str] | None:
    if not isinstance(value, list):
        return None
    return [str(v) for v in value if v is not None]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


#: name -> (reader, default factory, check of an emitted value; None always passes: NaN is written as null)
FIELD_TYPES: dict[str, tuple[Callable[[Any], Any], Callable[[], Any], Callable[[Any], bool]]] = {
    "int": (_read_int, lambda: None, lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "float": (_read_float, lambda: None, _is_number),
    "str": (_read_str, str, lambda v: isinstance(v, str)),
    "bool": (_read_bool, lambda: False, lambda v: isinstance(v, bool)),
    "float_map": (_read_float_map, dict, lambda v: isinstance(v, dict) and all(isinstance(k, str) and (x is None or _is_number(x)) for k, x in v.items())),
    "str_map": (_read_str_map, dict, lambda v: isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, str) for k, x in v.items())),
    "str_list": (_read_str_list, list, lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
}


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    doc: str = ""


@dataclass(frozen=True)
class EventSpec:
    """One event of the stream: its name, what it means, its fields, which must be present."""

    name: str
    doc: str
    fields: dict[str, Field] = field(default_factory=dict)
    required: tuple[str, ...] = ()


#: Every event of the stream, by name (in registration order).
EVENTS: dict[str, EventSpec] = {}

#: Attribute names of :class:`Event` itself: no field may take them.
RESERVED = ("name", "raw", "get")

#: Fields every event carries.
COMMON_FIELDS = {"event": Field("event", "str", "the event's name"), "time": Field("time", "float", "Unix seconds")}


def register_event(name: str, doc: str, /, *, required: tuple[str, ...] = (), **fields: tuple[str, str]) -> EventSpec:
    """Add an event to the schema: ``field=(type, description)`` for each field.

    ``type`` is one of :data:`FIELD_TYPES`. ``required`` fields must be present
    (and readable) for a reader to use the event; the others may be missing.
    Registering the same name twice is an error (two definitions again).
    """
    if name in EVENTS:
        raise ValueError(f"event {name!r} is already registered")
    specs = {}
    for key, (kind, text) in fields.items():
        if kind not in FIELD_TYPES:
            raise ValueError(f"event {name!r}: field {key!r} has unknown type {kind!r}; known: {', '.join(FIELD_TYPES)}")
        if key in COMMON_FIELDS or key in RESERVED:
            raise ValueError(f"event {name!r}: field name {key!r} is reserved (common to every event, or an attribute of Event)")
        specs[key] = Field(key, kind, text)
    missing = [r for r in required if r not in specs]
    if missing:
        raise ValueError(f"event {name!r}: required field(s) {missing} are not declared")
    spec = EventSpec(name, doc, specs, tuple(required))
    EVENTS[name] = spec
    return spec


def event_spec(name: str) -> EventSpec | None:
    return EVENTS.get(name)


# -- the events -------------------------------------------------------------------
register_event(
    "start", "training (or a resumed attempt) begins",
    run_dir=("str", "the run folder"),
    method=("str", "method name"),
    iterations=("int", "iterations in total"),
    start_iteration=("int", "iteration the attempt starts from (0, or the resumed checkpoint's)"),
    device=("str", "torch device, e.g. cuda:0"),
    device_name=("str", "the device in words, with its memory"),
    amp=("bool", "mixed precision on"),
    version=("str", "semisup version"),
    labeled_cases=("int", "labeled training cases"),
    unlabeled_cases=("int", "unlabeled cases"),
    validation_cases=("int", "validation cases"),
    world_size=("int", "DDP processes"),
    memory_estimate_gib=("float", "the memory guard's estimate of one step"),
    init_from=("str", "the checkpoint whose weights started this run (train.init_from); null when none"),
)
register_event(
    "iteration", "a logged training iteration",
    required=("iteration",),
    iteration=("int", "1-based, completed"),
    iterations=("int", "iterations in total"),
    loss=("float", "total loss"),
    losses=("float_map", "loss components, name to value"),
    lr=("float", "learning rate"),
    it_per_s=("float", "iterations per second"),
    eta_seconds=("float", "estimated seconds left"),
    memory_gib=("float", "peak GPU memory on CUDA, peak RSS on the CPU"),
)
register_event(
    "validation", "validation Dice after an iteration",
    iteration=("int", "the iteration validated"),
    dice=("float", "mean over foreground classes"),
    dice_per_class=("float_map", "class name to Dice"),
    best_dice=("float", "best mean Dice so far"),
    is_best=("bool", "this validation is the best so far"),
)
register_event(
    "checkpoint", "a checkpoint was written",
    iteration=("int", "the checkpoint's iteration"),
    kind=("str", "last or best"),
    path=("str", "the file"),
)
register_event(
    "done", "training finished",
    iteration=("int", "last iteration"),
    best_dice=("float", "best validation Dice (null without validation)"),
    best_checkpoint=("str", "checkpoints/best.pt"),
    last_checkpoint=("str", "checkpoints/last.pt"),
    seconds=("float", "wall time of the attempt"),
)
register_event(
    "cancelled", "stopped on request (SIGTERM, SIGINT, SIGBREAK, or the cancel request file)",
    iteration=("int", "the iteration the run stopped after; null when the stop came while starting"),
    checkpoint=("str", "the last checkpoint, written on the way out; null when the stop came while starting"),
    reason=("str", "only for a stop while starting"),
)
register_event(
    "error", "the command failed",
    message=("str", "plain words, names the file or setting"),
    type=("str", "exception class"),
)
register_event(
    "warning", "something went wrong but the command goes on",
    message=("str", "names the file"),
    case=("str", "predict: an input that failed while the others go on, oriented unlike the training images, or whose predicted size is flagged"),
)
register_event(
    "predict_start", "prediction begins",
    cases=("int", "volumes to predict"),
    mc_samples=("int", "MC-dropout samples"),
    device=("str", "torch device"),
    mc_seed=("int", "seed of the dropout draws (inference.seed); also in scores.json, settings"),
    temperature=("float", "the run's temperature scaling (calibration.json) when applied; null when not"),
    calibration=("str", "whether calibration.json was applied, and if not why"),
)
register_event(
    "predicted", "one volume predicted",
    index=("int", "1-based position in the inputs"),
    total=("int", "number of inputs"),
    case=("str", "case name (the input's file stem)"),
    outputs=("str_map", "kind to path: label, uncertainty, mutual_information, probabilities"),
    scores=("float_map", "per-volume uncertainty scores"),
)
register_event(
    "predict_done", "prediction finished",
    cases=("int", "volumes predicted"),
    scores_csv=("str", "the scores table; null when none was written"),
    seconds=("float", "wall time"),
    failed=("str_list", "inputs that failed (the command then exits 2)"),
)
register_event(
    "export_start", "semisup export begins",
    format=("str", "torchscript, bundle or onnx"),
    checkpoint=("str", "the checkpoint exported"),
)
register_event(
    "export_done", "semisup export finished",
    format=("str", "torchscript, bundle or onnx"),
    output=("str", "the file or bundle folder written"),
)
register_event(
    "plan", "semisup plan wrote a configuration",
    config=("str", "the YAML written; null when printed to stdout"),
    fingerprint=("str", "the fingerprint JSON written beside it; null with stdout"),
    budget=("str", "cpu or gpu"),
    method=("str", "the planned method"),
    iterations=("int", "the planned training iterations"),
)
register_event(
    "calibrate_start", "temperature scaling of a run begins",
    run_dir=("str", "the run folder"),
    checkpoint=("str", "the checkpoint calibrated"),
    validation_cases=("int", "validation cases (0: cross-fitting on the labeled cases)"),
)
register_event(
    "calibrate_fold", "a cross-fitting model is trained",
    fold=("int", "0-based fold"),
    folds=("int", "number of folds"),
    held_out=("str_list", "case names the fold's model predicts"),
)
register_event(
    "calibrate_done", "temperature fitted, calibration.json written",
    temperature=("float", "the fitted temperature"),
    nll_before=("float", "NLL at T = 1 on the fitting voxels"),
    nll_after=("float", "NLL at the fitted T"),
    ece_before=("float", "ECE (15 bins) at T = 1"),
    ece_after=("float", "ECE at the fitted T"),
    voxels=("int", "voxels fitted on"),
)
register_event(
    "labelling_round", "a round of simulate-labelling measured",
    seed=("int", "the seed"),
    strategy=("str", "random, uncertainty or diverse"),
    round=("int", "0-based round"),
    n_labeled=("int", "labeled volumes this round"),
    dice=("float", "mean Dice on the held-out set"),
)
register_event(
    "comparison", "a paired comparison of two evaluated runs",
    metric=("str", "dice, jaccard, hd95 or asd"),
    cases=("int", "paired cases"),
    baseline_mean=("float", "baseline mean"),
    candidate_mean=("float", "candidate mean"),
    mean_difference=("float", "candidate - baseline"),
    median_difference=("float", "candidate - baseline"),
    improved=("int", "cases better with the candidate"),
    worsened=("int", "cases worse with the candidate"),
    p_value=("float", "Wilcoxon signed-rank, null when all differences are 0"),
    baseline_runs=("int", "runs averaged per case on the baseline side"),
    candidate_runs=("int", "runs averaged per case on the candidate side"),
)


# -- reading ----------------------------------------------------------------------
class Event:
    """One parsed event: ``name``, ``time``, each schema field as an attribute, ``raw`` for the rest.

    A field that is absent or unreadable reads as its type's default (``None`` for
    numbers, ``""``, ``False``, ``{}``); a name outside the schema is an
    ``AttributeError``, so a reader cannot use a field nobody emits.
    """

    __slots__ = ("name", "time", "raw", "_values")

    def __init__(self, name: str, time: float, raw: dict[str, Any], values: dict[str, Any]) -> None:
        self.name, self.time, self.raw, self._values = name, time, raw, values

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"event {self.name!r} has no field {name!r} in the schema (semisup/protocol/events.py)") from None

    def get(self, name: str, default: Any = None) -> Any:
        return self._values.get(name, default)

    def __repr__(self) -> str:
        return f"Event({self.name!r}, {self._values!r})"


def parse_record(record: Any) -> Event | None:
    """A decoded JSON object to an :class:`Event`; ``None`` for unknown events or a missing required field."""
    if not isinstance(record, dict) or not isinstance(record.get("event"), str):
        return None
    spec = EVENTS.get(record["event"])
    if spec is None:
        return None  # unknown event: ignored, as the protocol asks of readers
    values = {}
    for name, f in spec.fields.items():
        reader, default, _ = FIELD_TYPES[f.type]
        value = reader(record[name]) if name in record else None
        if value is None and name in spec.required:
            return None
        values[name] = default() if value is None else value
    return Event(spec.name, _read_float(record.get("time")) or 0.0, record, values)


def parse_line(line: str) -> Event | None:
    """One stdout line to an :class:`Event`; ``None`` for blank, non-JSON, non-object or unknown lines.

    A stray print or the truncated last line of a killed worker is never an exception.
    """
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return parse_record(record)


def validate(record: dict[str, Any]) -> list[str]:
    """What is wrong with an event about to be written: unknown event or field, missing or mistyped value."""
    name = record.get("event")
    spec = EVENTS.get(name) if isinstance(name, str) else None
    if spec is None:
        return [f"unknown event {name!r}: register it in semisup/protocol/events.py"]
    problems = []
    for key, value in record.items():
        if key in COMMON_FIELDS:
            continue
        f = spec.fields.get(key)
        if f is None:
            problems.append(f"event {name!r}: field {key!r} is not in the schema (semisup/protocol/events.py)")
        elif value is not None and not FIELD_TYPES[f.type][2](value):
            problems.append(f"event {name!r}: field {key!r} should be {f.type}, got {type(value).__name__} {value!r}")
    problems += [f"event {name!r}: required field {r!r} is missing" for r in spec.required if record.get(r) is None]
    return problems
