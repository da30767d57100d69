"""The worker protocol (docs/worker-protocol.md) as code: event schema, progress state, exit codes.

Layer 0: no torch, no numpy, nothing else of the package. Front ends (the Slicer
module, scripts) import it to read a worker; the engine and the commands import it
to write one.
"""

from .events import EVENTS, Event, EventSpec, parse_line, parse_record, register_event, validate
from .exits import CANCEL_FILE, EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_ERROR, EXIT_OK, STATUS_EXIT_CODES, ExitStatus, explain_exit
from .tracker import ProgressTracker, format_duration

__all__ = [
    "EVENTS",
    "Event",
    "EventSpec",
    "parse_line",
    "parse_record",
    "register_event",
    "validate",
    "CANCEL_FILE",
    "EXIT_OK",
    "EXIT_ERROR",
    "EXIT_BAD_INPUT",
    "EXIT_CANCELLED",
    "STATUS_EXIT_CODES",
    "ExitStatus",
    "explain_exit",
    "ProgressTracker",
    "format_duration",
]
