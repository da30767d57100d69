"""The "Review" section of the module panel: Qt only, every decision in :class:`ReviewLogic`.

Built in code as one collapsible section appended below the panel of the .ui file,
so it stays independent of the other sections. The widget hands it each finished
prediction (:meth:`setPrediction`); "Continue training" returns a training job that
the widget polls like any other.
"""

from __future__ import annotations

import ctk
import qt
import slicer

from .ReviewLogic import ReviewLogic
from .SceneExporter import InputError

__all__ = ["ReviewSection"]


class ReviewSection:
    """Table of the last prediction ranked by score; select, accept, continue.

    Parameters
    ----------
    logic:
        The module's logic.
    onTrainingStarted:
        Called with the job of "Continue training" (the widget polls it and shows progress).
    """

    def __init__(self, logic, onTrainingStarted) -> None:
        self.logic = logic
        self.onTrainingStarted = onTrainingStarted
        self.review: ReviewLogic | None = None
        self.button = ctk.ctkCollapsibleButton()
        self.button.text = "Review"
        self.button.collapsed = True
        form = qt.QVBoxLayout(self.button)
        self.help = qt.QLabel("Predict first: the predicted volumes are listed here, most uncertain first.")
        self.help.wordWrap = True
        form.addWidget(self.help)
        self.tableWidget = qt.QTableWidget()
        self.tableWidget.setColumnCount(4)
        self.tableWidget.setHorizontalHeaderLabels(["Volume", "Score", "Predicted (ml)", "Status"])
        self.tableWidget.setSelectionBehavior(qt.QAbstractItemView.SelectRows)
        self.tableWidget.setSelectionMode(qt.QAbstractItemView.SingleSelection)
        self.tableWidget.setEditTriggers(qt.QAbstractItemView.NoEditTriggers)
        self.tableWidget.itemSelectionChanged.connect(self.onSelect)
        form.addWidget(self.tableWidget)
        self.opacitySlider = ctk.ctkSliderWidget()
        self.opacitySlider.minimum, self.opacitySlider.maximum, self.opacitySlider.singleStep = 0.0, 1.0, 0.05
        self.opacitySlider.value = 0.5
        self.opacitySlider.toolTip = "Opacity of the uncertainty overlay"
        self.opacitySlider.valueChanged.connect(lambda value: self.onSelect())
        form.addWidget(self.opacitySlider)
        buttons = qt.QHBoxLayout()
        self.acceptButton = qt.QPushButton("Accept as labeled")
        self.acceptButton.toolTip = "Store the (corrected) segmentation of the selected volume as a labeled case for the next training"
        self.acceptButton.clicked.connect(self.onAccept)
        buttons.addWidget(self.acceptButton)
        self.iterationsSpinBox = qt.QSpinBox()
        self.iterationsSpinBox.setRange(1, 1000000)
        self.iterationsSpinBox.value = 1000
        self.iterationsSpinBox.toolTip = "Iterations of the continued training"
        buttons.addWidget(self.iterationsSpinBox)
        self.continueButton = qt.QPushButton("Continue training")
        self.continueButton.toolTip = "A new run, warm-started from this run's model, with the accepted volumes added to the labeled set"
        self.continueButton.clicked.connect(self.onContinue)
        buttons.addWidget(self.continueButton)
        form.addLayout(buttons)
        self.statusLabel = qt.QLabel("")
        self.statusLabel.wordWrap = True
        form.addWidget(self.statusLabel)
        self._refresh()

    def setPrediction(self, result) -> None:
        """A finished prediction: list its volumes."""
        try:
            self.review = ReviewLogic.fromPrediction(self.logic, result)
        except InputError as exc:
            self.review = None
            self.statusLabel.text = str(exc)
        self.button.collapsed = self.review is None
        self._refresh()

    def _refresh(self) -> None:
        rows = self.review.rows() if self.review else []
        self.tableWidget.setRowCount(len(rows))
        for r, item in enumerate(rows):
            status = item.status if item.foregroundVoxels else f"{item.status} (nothing predicted)"
            for c, text in enumerate((item.volume.GetName(), f"{item.score:.4g}", f"{item.predictedMl:.2f}", status)):
                self.tableWidget.setItem(r, c, qt.QTableWidgetItem(text))
        self.help.visible = not rows
        self.acceptButton.enabled = bool(rows)
        self.continueButton.enabled = bool(self.review and self.review.acceptedPairs())

    def _selectedRow(self) -> int | None:
        rows = self.tableWidget.selectionModel().selectedRows() if self.tableWidget.selectionModel() else []
        return rows[0].row() if rows else None

    def onSelect(self) -> None:
        row = self._selectedRow()
        if self.review is None or row is None:
            return
        item = self.review.select(row, opacity=float(self.opacitySlider.value))
        slicer.util.resetSliceViews()
        self.statusLabel.text = f"{item.volume.GetName()}: correct its segmentation with the Segment Editor, then accept it."

    def onAccept(self) -> None:
        row = self._selectedRow()
        if self.review is None or row is None:
            self.statusLabel.text = "Select a volume in the table first."
            return
        try:
            change = self.review.accept(row)
        except InputError as exc:
            slicer.util.errorDisplay(str(exc), windowTitle="SemiSupUncertainty: cannot accept")
            return
        self.statusLabel.text = f"Accepted: Dice to the prediction {change.dice:.3f}, {change.changedMl:.2f} ml changed."
        self._refresh()

    def onContinue(self) -> None:
        if self.review is None:
            return
        try:
            job = self.review.continueTraining(iterations=int(self.iterationsSpinBox.value), wait=False, chart=True)
        except InputError as exc:
            slicer.util.errorDisplay(str(exc), windowTitle="SemiSupUncertainty: cannot continue training")
            return
        self.statusLabel.text = f"Training a new run in {job.runDir} from {self.review.runDir.name}'s model."
        self.onTrainingStarted(job)
