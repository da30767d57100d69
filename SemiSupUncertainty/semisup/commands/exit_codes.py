"""Exit codes of every command (docs/worker-protocol.md); defined with the rest of the protocol."""

from ..protocol.exits import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_ERROR, EXIT_OK

__all__ = ["EXIT_OK", "EXIT_ERROR", "EXIT_BAD_INPUT", "EXIT_CANCELLED"]
