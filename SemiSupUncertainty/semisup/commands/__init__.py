"""User-facing commands: one module per ``semisup`` verb.

Each module holds the behaviour of one command as ``run(args, emit) -> exit code``;
``semisup.cli`` only builds the parser and dispatches here. Commands sit at the top
of the package: they may import every layer below, nothing below imports them.
"""

from .exit_codes import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_ERROR, EXIT_OK

__all__ = ["EXIT_OK", "EXIT_ERROR", "EXIT_BAD_INPUT", "EXIT_CANCELLED"]
