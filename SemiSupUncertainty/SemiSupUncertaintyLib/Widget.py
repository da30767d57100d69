"""The module panel: Qt only, every decision delegated to the logic.

The only file of the extension that uses ``qt``/``ctk``/``slicer.app``. The widget
keeps the GUI and the parameter node in step, turns clicks into logic calls, and
polls the running job from a ``qt.QTimer`` (200 ms) so Slicer stays responsive while
the worker trains. The logic and the install logic are passed in (see
``Protocols.py``), so another implementation can be plugged in.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import qt
import slicer
from slicer.util import VTKObservationMixin

from .DeviceInfo import queryDeviceInfoAsync
from .InstallLogic import InstallError, InstallLogic
from .Logic import SemiSupUncertaintyLogic
from .Parameters import GuiState, ParameterNode, PredictionSettings
from .Paths import resourcePath
from .Protocols import InstallLogicProtocol, LogicProtocol
from .ReviewSection import ReviewSection
from .SceneExporter import InputError, SceneExporter
from .WorkerProcess import ExitStatus

from semisup.protocol.run_folder import RunInfo

__all__ = ["Widget"]

log = logging.getLogger("SemiSupUncertainty")

_ID_ROLE = qt.Qt.UserRole


def _parseOverrides(text: str) -> dict[str, str]:
    out = {}
    for part in text.replace("\n", ";").split(";"):
        if part.strip():
            if "=" not in part:
                raise InputError(f"'{part.strip()}' in 'Other settings' is not key=value")
            key, value = part.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def _parsePatch(text: str) -> list[int] | None:
    text = text.strip()
    if not text or text.lower() == "auto":
        return None
    try:
        return [int(v) for v in text.replace("x", ",").replace(" ", ",").split(",") if v]
    except ValueError:
        raise InputError(f"patch size '{text}' is not a list of whole numbers such as 112, 112, 80") from None


class Widget(qt.QWidget, VTKObservationMixin):
    def __init__(self, logic: LogicProtocol | None = None, installLogic: InstallLogicProtocol | None = None, parent=None) -> None:
        qt.QWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = logic or SemiSupUncertaintyLogic()
        self.installLogic = installLogic or InstallLogic()
        self.trainJob = None
        self.planJob = None
        self.predictJob = None
        self._updating = False
        self._deviceInfo = None
        self._devicePending = False
        self._deviceChecked = False
        self._listsDirty = False
        self._runInfo = None  # RunInfo of the selected run (read when the selection changes)
        self._reportedJobs: set[int] = set()

        uiWidget = slicer.util.loadUI(str(resourcePath("UI/SemiSupUncertainty.ui")))
        layout = qt.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        # Review (issue 13): its own section below the .ui panel, logic in ReviewLogic.
        self.reviewSection = ReviewSection(self.logic, self._startedContinuedTraining)
        layout.addWidget(self.reviewSection.button)

        self.timer = qt.QTimer(self)
        self.timer.setInterval(200)
        self.timer.timeout.connect(self.onTimer)
        self.params = ParameterNode.getOrCreate(slicer.mrmlScene)
        self._connect()
        self._observeScene()
        # The saved parameters fill the GUI first; ctkDirectoryButton emits directoryChanged
        # when its directory is set, which must not write the GUI's defaults over them.
        self.updateGuiFromParameters()
        self.updateDependencies()

    # -- wiring ----------------------------------------------------------------
    def _connect(self) -> None:
        ui = self.ui
        ui.checkDeviceButton.clicked.connect(self.onCheckDevice)
        ui.installButton.clicked.connect(self.onInstall)
        ui.pairButton.clicked.connect(self.onPair)
        ui.addPairButton.clicked.connect(self.onAddPair)
        ui.removePairButton.clicked.connect(self.onRemovePairs)
        ui.selectAllUnlabeledButton.clicked.connect(lambda: self._checkAll(ui.unlabeledListWidget, True))
        ui.selectNoUnlabeledButton.clicked.connect(lambda: self._checkAll(ui.unlabeledListWidget, False))
        ui.unlabeledListWidget.itemChanged.connect(lambda item: self._unlabeledChosen())
        ui.predictVolumeListWidget.itemChanged.connect(lambda item: self.updateParametersFromGui())
        ui.planButton.clicked.connect(self.onPlan)
        ui.trainButton.clicked.connect(self.onTrain)
        ui.resumeButton.clicked.connect(self.onResume)
        ui.cancelButton.clicked.connect(self.onCancelTraining)
        ui.predictButton.clicked.connect(self.onPredict)
        ui.predictCancelButton.clicked.connect(self.onCancelPrediction)
        ui.refreshRunsButton.clicked.connect(self.updateRunList)
        ui.browseRunButton.clicked.connect(self.onBrowseRun)
        ui.runComboBox.currentIndexChanged.connect(lambda index: self.onRunSelected())
        ui.runsDirectoryButton.directoryChanged.connect(lambda path: self.onRunsDirectoryChanged(path))
        for widget in (ui.methodComboBox, ui.networkComboBox, ui.modalityComboBox, ui.deviceComboBox):
            widget.currentTextChanged.connect(lambda text: self.updateParametersFromGui())
        for widget in (ui.iterationsSpinBox, ui.labeledBatchSpinBox, ui.unlabeledBatchSpinBox, ui.mcSamplesSpinBox, ui.validationFractionSpinBox):
            widget.valueChanged.connect(lambda value: self.updateParametersFromGui())
        for widget in (ui.patchSizeLineEdit, ui.overridesLineEdit, ui.runNameLineEdit):
            widget.editingFinished.connect(self.updateParametersFromGui)

    def _observeScene(self) -> None:
        scene = slicer.mrmlScene
        for event in (scene.NodeAddedEvent, scene.NodeRemovedEvent):
            self.addObserver(scene, event, self.onSceneNodesChanged)
        self.addObserver(scene, scene.EndImportEvent, self.onSceneReset)
        self.addObserver(scene, scene.EndCloseEvent, self.onSceneReset)

    def onEnter(self) -> None:
        """Module shown: tell which GPU (or the CPU fallback) training will use, once."""
        if not self._deviceChecked and self.installLogic.isReady():
            self.onCheckDevice()

    def cleanup(self) -> None:
        """Module closed or Slicer exiting: stop the workers (gracefully, then the tree) and observers."""
        self.timer.stop()
        for job in (self.trainJob, self.predictJob):
            if job is not None and job.isRunning():
                job.cancel(gracePeriod=5.0)
                job.wait(timeout=15.0)
        self.removeObservers()

    # -- parameter node <-> GUI ------------------------------------------------
    def onSceneReset(self, caller=None, event=None) -> None:
        self.params = ParameterNode.getOrCreate(slicer.mrmlScene)
        self.updateGuiFromParameters()

    def onSceneNodesChanged(self, caller=None, event=None) -> None:
        if not self._listsDirty:  # one refresh per burst of node events (a prediction adds dozens)
            self._listsDirty = True
            qt.QTimer.singleShot(100, self._refreshLists)

    def _refreshLists(self) -> None:
        self._listsDirty = False
        self.updateLists()

    def updateGuiFromParameters(self) -> None:
        state = self.params.loadState()
        ui = self.ui
        self._updating = True
        try:
            t, p = state.training, state.prediction
            for combo, value in ((ui.methodComboBox, t.method), (ui.networkComboBox, t.network), (ui.modalityComboBox, t.modality), (ui.deviceComboBox, t.device)):
                if combo.findText(value) < 0:
                    combo.addItem(value)
                combo.setCurrentText(value)
            ui.iterationsSpinBox.value = t.iterations
            ui.labeledBatchSpinBox.value = t.labeledBatch
            ui.unlabeledBatchSpinBox.value = t.unlabeledBatch
            ui.validationFractionSpinBox.value = t.validationFraction
            ui.patchSizeLineEdit.text = ", ".join(str(v) for v in t.patchSize) if t.patchSize else ""
            ui.mcSamplesSpinBox.value = p.mcSamples
            ui.runNameLineEdit.text = state.runName
            ui.overridesLineEdit.text = self.params.node.GetParameter("overridesText") or ""
            if state.runsDirectory:
                self.logic.runsDirectory = Path(state.runsDirectory)
            ui.runsDirectoryButton.directory = str(self.logic.runsDirectory)  # its signal is ignored while updating
        finally:
            self._updating = False
        self.updateLists()
        self.updateRunList(select=state.predictRunDir or state.currentRunDir)

    def guiState(self) -> GuiState:
        ui = self.ui
        old = self.params.loadState()
        # Fields the panel does not show (base filters, intervals, learning rate: a plan's or the
        # console's) keep their saved values.
        training = dataclasses.replace(
            old.training,
            method=ui.methodComboBox.currentText.strip(),
            network=ui.networkComboBox.currentText,
            iterations=int(ui.iterationsSpinBox.value),
            labeledBatch=int(ui.labeledBatchSpinBox.value),
            unlabeledBatch=int(ui.unlabeledBatchSpinBox.value),
            validationFraction=float(ui.validationFractionSpinBox.value),
            modality=ui.modalityComboBox.currentText,
            device=ui.deviceComboBox.currentText.strip() or "auto",
            spatialDims=2 if ui.networkComboBox.currentText == "unet2d" else 3,
        )
        try:
            training.patchSize = _parsePatch(ui.patchSizeLineEdit.text)
        except InputError:
            training.patchSize = None
        return GuiState(
            training=training,
            prediction=PredictionSettings(mcSamples=int(ui.mcSamplesSpinBox.value), device=training.device),
            runsDirectory=str(ui.runsDirectoryButton.directory),
            runName=ui.runNameLineEdit.text.strip(),
            currentRunDir=old.currentRunDir,
            predictRunDir=self._selectedRun() or old.predictRunDir,
            planPath=old.planPath,
        )

    def updateParametersFromGui(self) -> None:
        if self._updating:
            return
        self.params.saveState(self.guiState())
        self.params.node.SetParameter("overridesText", self.ui.overridesLineEdit.text)
        self.params.setUnlabeledVolumes(self._checkedNodes(self.ui.unlabeledListWidget))
        self.params.setPredictVolumes(self._checkedNodes(self.ui.predictVolumeListWidget))
        self.updateClasses()

    # -- lists -----------------------------------------------------------------
    def _fillList(self, listWidget, entries) -> None:
        """``entries``: (text, node IDs joined by ';', checked or None for not checkable)."""
        listWidget.blockSignals(True)
        listWidget.clear()
        for text, ids, checked in entries:
            item = qt.QListWidgetItem(text)
            item.setData(_ID_ROLE, ids)
            if checked is not None:
                item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
                item.setCheckState(qt.Qt.Checked if checked else qt.Qt.Unchecked)
            listWidget.addItem(item)
        listWidget.blockSignals(False)

    def _checkedNodes(self, listWidget) -> list:
        nodes = []
        for i in range(listWidget.count):
            item = listWidget.item(i)
            if item.checkState() == qt.Qt.Checked:
                node = slicer.mrmlScene.GetNodeByID(item.data(_ID_ROLE))
                if node is not None:
                    nodes.append(node)
        return nodes

    def _checkAll(self, listWidget, checked: bool) -> None:
        listWidget.blockSignals(True)
        for i in range(listWidget.count):
            listWidget.item(i).setCheckState(qt.Qt.Checked if checked else qt.Qt.Unchecked)
        listWidget.blockSignals(False)
        self._unlabeledChosen()

    def _unlabeledChosen(self) -> None:
        """From now on the unlabeled list is the user's choice, not 'every other volume'."""
        self.params.node.SetParameter("unlabeledChosen", "1")
        self.updateParametersFromGui()

    def updateLists(self) -> None:
        pairs = self.params.labeledPairs()
        self._fillList(self.ui.labeledListWidget, [(f"{v.GetName()}  ←  {s.GetName()}", f"{v.GetID()};{s.GetID()}", None) for v, s in pairs])
        exporter = SceneExporter(slicer.mrmlScene)
        candidates = exporter.defaultUnlabeledVolumes(pairs)
        chosen = {n.GetID() for n in self.params.unlabeledVolumes()}
        if not self.params.node.GetParameter("unlabeledChosen"):  # never chosen by the user: all
            chosen = {n.GetID() for n in candidates}
        # RGB/vector volumes are listed too, for training on RGB cases, but never ticked by default
        used = {v.GetID() for v, _ in pairs} | {v.GetID() for v in candidates}
        candidates += [v for v in exporter.inputVolumes() if v.GetID() not in used]
        self._fillList(self.ui.unlabeledListWidget, [(v.GetName(), v.GetID(), v.GetID() in chosen) for v in candidates])
        allVolumes = exporter.inputVolumes()  # RGB/vector too, chosen by hand
        toPredict = {n.GetID() for n in self.params.predictVolumes()}
        self._fillList(self.ui.predictVolumeListWidget, [(v.GetName(), v.GetID(), v.GetID() in toPredict) for v in allVolumes])
        self.updateClasses()
        self.updateButtons()

    def updateClasses(self) -> None:
        pairs = self.params.labeledPairs()
        if not pairs:
            self._setLabel(self.ui.classesLabel, "Classes: pair labeled cases first.", "")
            return
        try:
            classes = self.logic.checkInputs(pairs, self._checkedNodes(self.ui.unlabeledListWidget))
        except InputError as exc:
            self._setLabel(self.ui.classesLabel, f"Cannot train yet:\n{exc}", "error")
            return
        unlabeled = len(self._checkedNodes(self.ui.unlabeledListWidget))
        self._setLabel(self.ui.classesLabel, f"Classes: {', '.join(classes)} · {len(pairs)} labeled, {unlabeled} unlabeled volume(s)", "ok")

    def onPair(self) -> None:
        pairs = self.logic.pairSegmentationsWithVolumes()
        if not pairs:
            slicer.util.warningDisplay("No segmentation references a volume. Create segmentations in Segment Editor on the volumes to label, or add pairs one by one.", windowTitle="SemiSupUncertainty")
        self.params.setLabeledPairs(pairs)
        self._forgetPlan()
        self.updateLists()
        self.updateParametersFromGui()

    def onAddPair(self) -> None:
        volume, seg = self.ui.volumeSelector.currentNode(), self.ui.segmentationSelector.currentNode()
        if volume is None or seg is None:
            return
        pairs = [p for p in self.params.labeledPairs() if p[0].GetID() != volume.GetID()]
        self.params.setLabeledPairs(pairs + [(volume, seg)])
        self._forgetPlan()
        self.updateLists()
        self.updateParametersFromGui()

    def onRemovePairs(self) -> None:
        selected = {item.data(_ID_ROLE) for item in self.ui.labeledListWidget.selectedItems()}
        pairs = [p for p in self.params.labeledPairs() if f"{p[0].GetID()};{p[1].GetID()}" not in selected]
        self.params.setLabeledPairs(pairs)
        self._forgetPlan()
        self.updateLists()
        self.updateParametersFromGui()

    # -- setup -----------------------------------------------------------------
    def updateDependencies(self) -> None:
        if self.installLogic.isReady():
            self._setLabel(self.ui.dependenciesLabel, "Python packages: ready.", "ok")
        else:
            self._setLabel(self.ui.dependenciesLabel, f"Python packages missing: {self.installLogic.describeMissing()}", "error")

    def onInstall(self) -> None:
        try:
            with slicer.util.WaitCursor():
                done = self.installLogic.setupPythonRequirements(askConfirmation=True)
        except InstallError as exc:  # pip's and the PyTorch installer's CalledProcessError arrive as InstallError
            slicer.util.errorDisplay(str(exc), windowTitle="SemiSupUncertainty: installation failed")
            done = False
        self.updateDependencies()
        if done and getattr(self.installLogic, "restartRequired", False):
            if slicer.util.confirmYesNoDisplay("Packages Slicer had already loaded were updated. Restart Slicer now?"):
                slicer.util.restart()
        if done:
            self.onCheckDevice()

    def onCheckDevice(self) -> None:
        """Ask the worker's interpreter which device it sees, without blocking the GUI."""
        if self._devicePending:
            return
        self._devicePending = True
        self._setLabel(self.ui.deviceLabel, "Checking which GPU PyTorch sees...", "")
        logic = self.logic
        queryDeviceInfoAsync(self._receiveDeviceInfo, python=getattr(logic, "python", None), pythonPath=getattr(logic, "extraPythonPath", ()), extraEnv=getattr(logic, "workerEnv", None))
        self.timer.start()

    def _receiveDeviceInfo(self, info) -> None:  # probe thread: only store, the timer shows it
        self._deviceInfo = info

    def _showDeviceInfo(self) -> None:
        info, self._deviceInfo, self._devicePending, self._deviceChecked = self._deviceInfo, None, False, True
        self._setLabel(self.ui.deviceLabel, info.summary(), "ok" if info.cuda else "warning")
        if info.methods:
            current = self.ui.methodComboBox.currentText
            self.ui.methodComboBox.blockSignals(True)
            self.ui.methodComboBox.clear()
            for name in info.methods:
                self.ui.methodComboBox.addItem(name)
            self.ui.methodComboBox.setCurrentText(current if current in info.methods else info.methods[0])
            self.ui.methodComboBox.blockSignals(False)

    # -- training --------------------------------------------------------------
    def _ensureReady(self) -> bool:
        if self.installLogic.isReady():
            return True
        if not slicer.util.confirmOkCancelDisplay(f"Training needs Python packages that are missing: {self.installLogic.describeMissing()}.\nInstall them now?"):
            return False
        self.onInstall()
        return self.installLogic.isReady()

    def onTrain(self) -> None:
        self.updateParametersFromGui()
        state = self.guiState()
        try:
            overrides = _parseOverrides(self.ui.overridesLineEdit.text)
            state.training.patchSize = _parsePatch(self.ui.patchSizeLineEdit.text)
            if not self._ensureReady():
                return
            if not self._deviceChecked:
                self.onCheckDevice()  # GPU or CPU-fallback notice shown while the worker starts
            runDir = self.logic.newRunDir(state.training.method, state.runName or None, state.runsDirectory or None)
            with slicer.util.WaitCursor():
                self.trainJob = self.logic.train(
                    self.params.labeledPairs(),
                    self._checkedNodes(self.ui.unlabeledListWidget),
                    runDir,
                    settings=state.training,
                    overrides=overrides,
                    plan=state.planPath or None,
                    wait=False,
                    chart=True,
                )
        except InputError as exc:
            slicer.util.errorDisplay(str(exc), windowTitle="SemiSupUncertainty: cannot start training")
            return
        self._startedTraining(runDir)

    def onPlan(self) -> None:
        """Fill the panel from the selected cases (``semisup plan`` in the worker); Train then uses the plan."""
        self.updateParametersFromGui()
        state = self.guiState()
        try:
            if not self._ensureReady():
                return
            with slicer.util.WaitCursor():
                self.planJob = self.logic.plan(
                    self.params.labeledPairs(),
                    self._checkedNodes(self.ui.unlabeledListWidget),
                    device=state.training.device,
                    validationFraction=state.training.validationFraction,
                    wait=False,
                )
        except InputError as exc:
            slicer.util.errorDisplay(str(exc), windowTitle="SemiSupUncertainty: cannot plan")
            return
        self._setLabel(self.ui.trainStatusLabel, "Planning from the selected cases (spacing, sizes, intensities, class sizes)...", "")
        self.timer.start()
        self.updateButtons()

    def _applyPlan(self, result) -> None:
        state = self.params.loadState()
        state.training = dataclasses.replace(result.settings, validationFraction=state.training.validationFraction)
        state.planPath = str(result.planPath)
        self.params.saveState(state)
        self.updateGuiFromParameters()
        t = result.settings
        patch = " x ".join(str(v) for v in t.patchSize) if t.patchSize else "automatic"
        self._setLabel(self.ui.trainStatusLabel, f"Planned: {t.method}, {t.iterations} iterations, {t.network} ({t.baseFilters} filters), patch {patch}. "
                       f"Edit any value before Train; the reasons are in {result.planPath}", "ok")

    def _forgetPlan(self) -> None:
        """The labeled cases changed: the plan was made for others."""
        state = self.params.loadState()
        if state.planPath:
            state.planPath = ""
            self.params.saveState(state)

    def onResume(self) -> None:
        runDir = self._selectedRun()
        if not runDir:
            return
        try:
            if not self._ensureReady():
                return
            self.trainJob = self.logic.resume(runDir, wait=False, chart=True)
        except InputError as exc:
            slicer.util.errorDisplay(str(exc), windowTitle="SemiSupUncertainty: cannot resume")
            return
        self._startedTraining(Path(runDir))

    def _startedTraining(self, runDir: Path) -> None:
        state = self.params.loadState()
        state.currentRunDir = str(runDir)
        self.params.saveState(state)
        chart = getattr(self.trainJob, "chart", None)
        if chart is not None:
            slicer.modules.plots.logic().ShowChartInLayout(chart.chartNode)
        self.ui.trainProgressBar.setVisible(True)
        self.ui.trainProgressBar.value = 0
        self._setLabel(self.ui.trainStatusLabel, f"Starting the training process in {runDir} ...", "")
        self.timer.start()
        self.updateButtons()

    def onCancelTraining(self) -> None:
        if self.trainJob is not None and self.trainJob.isRunning():
            self.trainJob.cancel()
            self._setLabel(self.ui.trainStatusLabel, "Cancelling: finishing the current iteration and saving a checkpoint...", "")

    # -- prediction ------------------------------------------------------------
    def updateRunList(self, select: str | None = None) -> None:
        combo = self.ui.runComboBox
        current = select or self._selectedRun()
        combo.blockSignals(True)
        combo.clear()
        runs = self.logic.listRuns(self.ui.runsDirectoryButton.directory)
        extra = [current] if current and Path(current).is_dir() and all(str(r.path) != current for r in runs) else []
        for info in runs + [RunInfo.read(p) for p in extra]:
            combo.addItem(info.describe(), str(info.path))
        index = combo.findData(current) if current else -1
        combo.setCurrentIndex(index if index >= 0 else 0)
        combo.blockSignals(False)
        self.onRunSelected()

    def _selectedRun(self) -> str:
        data = self.ui.runComboBox.currentData
        return str(data) if data else ""

    def onRunSelected(self) -> None:
        run = self._selectedRun()
        self._runInfo = RunInfo.read(run) if run else None
        if run:
            info = self._runInfo
            classes = f" Classes: {', '.join(info.class_names)}." if info.class_names else ""
            self._setLabel(self.ui.runInfoLabel, f"{info.describe()}.{classes}", "error" if info.state == "failed" else "")
        else:
            self._setLabel(self.ui.runInfoLabel, "No trained run in the runs folder yet.", "")
        if not self._updating and run:
            state = self.params.loadState()
            state.predictRunDir = run
            self.params.saveState(state)
        self.updateButtons()

    def onRunsDirectoryChanged(self, path: str) -> None:
        if self._updating:  # set from the parameter node, not by the user
            return
        self.logic.runsDirectory = Path(path)
        self.updateParametersFromGui()
        self.updateRunList()

    def onBrowseRun(self) -> None:
        path = qt.QFileDialog.getExistingDirectory(self, "Select a run folder", str(self.ui.runsDirectoryButton.directory))
        if path:
            self.updateRunList(select=path)

    def onPredict(self) -> None:
        self.updateParametersFromGui()
        volumes = self._checkedNodes(self.ui.predictVolumeListWidget)
        try:
            if not self._ensureReady():
                return
            with slicer.util.WaitCursor():
                self.predictJob = self.logic.predict(self._selectedRun(), volumes, mcSamples=int(self.ui.mcSamplesSpinBox.value), device=self.ui.deviceComboBox.currentText.strip() or "auto", wait=False)
        except InputError as exc:
            slicer.util.errorDisplay(str(exc), windowTitle="SemiSupUncertainty: cannot predict")
            return
        self.ui.predictProgressBar.setVisible(True)
        self.ui.predictProgressBar.value = 0
        self._setLabel(self.ui.predictStatusLabel, "Starting the prediction process...", "")
        self.timer.start()
        self.updateButtons()

    def onCancelPrediction(self) -> None:
        if self.predictJob is not None and self.predictJob.isRunning():
            self.predictJob.cancel(gracePeriod=3.0)

    # -- the timer: progress, completion ---------------------------------------
    def onTimer(self) -> None:
        if self._deviceInfo is not None:
            self._showDeviceInfo()
        jobs = ((self.planJob, self.ui.trainProgressBar, self.ui.trainStatusLabel), (self.trainJob, self.ui.trainProgressBar, self.ui.trainStatusLabel), (self.predictJob, self.ui.predictProgressBar, self.ui.predictStatusLabel))
        for job, bar, status in jobs:
            if job is None or id(job) in self._reportedJobs:
                continue
            try:
                events = job.poll()
            except Exception as exc:  # never let an exception stop the timer silently
                log.exception("polling the worker failed")
                job.kill()
                slicer.util.errorDisplay(f"Lost track of the worker: {exc}", windowTitle="SemiSupUncertainty")
                self._reportedJobs.add(id(job))
                continue
            if events or job.finished:
                bar.value = int(round(100 * job.tracker.fraction()))
                self._setLabel(status, job.tracker.status_text(), "")
            if job.finished:
                self._reportedJobs.add(id(job))
                self._finished(job, status)
        running = any(j is not None and id(j) not in self._reportedJobs for j in (self.planJob, self.trainJob, self.predictJob))
        if not running and not self._devicePending:
            self.timer.stop()
        self.updateButtons()

    def _finished(self, job, statusLabel) -> None:
        if job.status == ExitStatus.FINISHED:
            if job is self.planJob:
                self._applyPlan(job.result)
            elif job is self.trainJob:
                self._setLabel(statusLabel, job.tracker.status_text() + f"\nRun folder: {job.runDir}", "ok")
                self.updateRunList(select=str(job.runDir))
            else:
                self._showPrediction(job.result)
                self._setLabel(statusLabel, f"{job.tracker.status_text()}. The ranking table lists the most uncertain volume first: label it next.", "ok")
            return
        if job.status == ExitStatus.CANCELLED:
            self._setLabel(statusLabel, job.errorMessage, "warning")
            self.updateRunList(select=str(getattr(job, "runDir", "")) or None)
            return
        # Failure: the worker's own words, in the panel and in a dialog, not only in the console.
        self._setLabel(statusLabel, f"Failed: {job.errorMessage}", "error")
        logPath = getattr(job.worker, "logPath", None)
        slicer.util.errorDisplay(job.errorMessage, windowTitle="SemiSupUncertainty: the worker stopped", detailedText=f"Full log: {logPath}" if logPath else "")
        self.updateRunList()

    def _startedContinuedTraining(self, job) -> None:
        self.trainJob = job
        self._startedTraining(job.runDir)

    def _showPrediction(self, result) -> None:
        if result is None or result.table is None:
            return
        self.reviewSection.setPrediction(result)
        appLogic = slicer.app.applicationLogic()
        appLogic.GetSelectionNode().SetActiveTableID(result.table.GetID())
        appLogic.PropagateTableSelection()
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None:
            layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
        slicer.util.resetSliceViews()

    # -- helpers ---------------------------------------------------------------
    def updateButtons(self) -> None:
        ui = self.ui
        training = self.trainJob is not None and self.trainJob.isRunning()
        predicting = self.predictJob is not None and self.predictJob.isRunning()
        info = self._runInfo
        planning = self.planJob is not None and self.planJob.isRunning()
        ui.trainButton.enabled = not training and not planning and bool(self.params.labeledPairs())
        ui.planButton.enabled = not training and not planning and bool(self.params.labeledPairs())
        ui.resumeButton.enabled = not training and info is not None and info.can_resume
        ui.cancelButton.enabled = training
        ui.predictButton.enabled = not predicting and info is not None and info.can_predict and bool(self._checkedNodes(ui.predictVolumeListWidget))
        ui.predictCancelButton.enabled = predicting

    @staticmethod
    def _setLabel(label, text: str, kind: str) -> None:
        colors = {"ok": "#1a7f37", "warning": "#9a6700", "error": "#cf222e"}
        label.text = text
        label.setStyleSheet(f"color: {colors[kind]};" if kind in colors else "")
