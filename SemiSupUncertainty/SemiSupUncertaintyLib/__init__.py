"""Slicer side of SemiSupUncertainty: scene export/import, the background worker, the shared logic.

Nothing here imports ``qt``/``ctk`` or the Slicer application at import time, so the
non-GUI parts work with the ``slicer-core`` wheel (tests, scripts). ``Widget`` is
imported on first use.
"""

from .Paths import ensureCoreLibraryOnPath

ensureCoreLibraryOnPath()  # the core library (semisup) ships beside this package


from .InstallLogic import InstallError, InstallLogic
from .Logic import SemiSupUncertaintyLogic
from .Parameters import GuiState, ParameterNode, PredictionSettings, TrainingSettings
from .PlanJob import PlanJob, PlanResult
from .PredictionJob import PredictionJob, PredictionResult
from .LabelChange import LabelChange
from .ReviewItem import ReviewItem
from .ReviewLogic import ReviewLogic
from .SceneExporter import InputError, SceneExporter
from .SceneImporter import SceneImporter
from .TrainingJob import TrainingJob, TrainingResult
from .WorkerProcess import ExitStatus, WorkerError, WorkerProcess

from semisup.protocol import ProgressTracker, parse_line  # noqa: E402  (after the path is set)
from semisup.protocol.run_folder import RunInfo, list_runs  # noqa: E402

__all__ = [
    "SemiSupUncertaintyLogic",
    "ReviewLogic",
    "ReviewItem",
    "LabelChange",
    "TrainingSettings",
    "PredictionSettings",
    "GuiState",
    "ParameterNode",
    "SceneExporter",
    "SceneImporter",
    "InputError",
    "WorkerProcess",
    "WorkerError",
    "ExitStatus",
    "TrainingJob",
    "TrainingResult",
    "PlanJob",
    "PlanResult",
    "PredictionJob",
    "PredictionResult",
    "ProgressTracker",
    "parse_line",
    "RunInfo",
    "list_runs",
    "InstallLogic",
    "InstallError",
    "Widget",
]


def __getattr__(name):
    if name == "Widget":  # needs qt/ctk/slicer GUI: only inside the Slicer application
        from .Widget import Widget

        return Widget
    raise AttributeError(name)
