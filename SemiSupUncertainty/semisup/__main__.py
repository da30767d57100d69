import sys

from .commands.signals import StartupCancelled, install_cancel_handlers, report_early_cancel

# Before the imports below (torch takes seconds): a stop request now is a cancel too.
install_cancel_handlers()
try:
    from .cli import main
except StartupCancelled as exc:
    sys.exit(report_early_cancel(exc, sys.argv))

sys.exit(main())
