"""Exit codes of every command (docs/worker-protocol.md)."""

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_BAD_INPUT = 2
EXIT_CANCELLED = 3
