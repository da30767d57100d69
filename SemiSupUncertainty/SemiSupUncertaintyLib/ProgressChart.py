"""Live loss and validation-Dice chart as Slicer plot nodes (tables + series + chart).

Pure MRML: the widget only shows ``chartNode`` in a plot view; updating is cheap
(rows are appended, the tables are rebuilt only when a resumed run truncated the
history).
"""

from __future__ import annotations

from semisup.protocol import ProgressTracker

from .SceneExporter import ROLE_ATTRIBUTE

__all__ = ["ProgressChart"]

#: Line colours: total loss, loss components (cycled), Dice.
_LOSS_COLOR = (0.85, 0.2, 0.2)
_COMPONENT_COLORS = [(0.95, 0.6, 0.3), (0.6, 0.4, 0.8), (0.4, 0.7, 0.4), (0.5, 0.5, 0.5)]
_DICE_COLOR = (0.1, 0.4, 0.9)


class ProgressChart:
    def __init__(self, scene=None, name: str = "SemiSup training") -> None:
        if scene is None:
            import slicer

            scene = slicer.mrmlScene
        self.scene = scene
        self.lossTable = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(f"{name} loss"))
        self.diceTable = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(f"{name} Dice"))
        self.chartNode = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", scene.GenerateUniqueName(name))
        for node in (self.lossTable, self.diceTable, self.chartNode):
            node.SetAttribute(ROLE_ATTRIBUTE, "progress")
        self.chartNode.SetTitle(name)
        self.chartNode.SetXAxisTitle("iteration")
        self.chartNode.SetYAxisTitle("loss / Dice")
        self._lossColumns: list[str] = []
        self.series: dict[str, object] = {}
        self._lossRows = 0
        self._diceRows = 0
        self._version = -1
        self._resetTables()
        self._addSeries("Dice", self.diceTable, "Dice", _DICE_COLOR, markers=True)

    def _column(self, table, name: str):
        import vtk

        array = vtk.vtkDoubleArray()
        array.SetName(name)
        table.GetTable().AddColumn(array)
        return array

    def _resetTables(self) -> None:
        for table in (self.lossTable, self.diceTable):
            table.RemoveAllColumns()
        self._column(self.lossTable, "iteration")
        self._column(self.lossTable, "loss")
        for name in self._lossColumns:
            self._column(self.lossTable, name)
        self._column(self.diceTable, "iteration")
        self._column(self.diceTable, "Dice")
        self._lossRows = self._diceRows = 0

    def _addSeries(self, label: str, table, column: str, color, markers: bool = False, dashed: bool = False) -> None:
        import slicer

        series = self.scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", self.scene.GenerateUniqueName(f"{self.chartNode.GetName()} {label}"))
        series.SetAttribute(ROLE_ATTRIBUTE, "progress")
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetXColumnName("iteration")
        series.SetYColumnName(column)
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle if markers else slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
        if dashed:
            series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleDash)
        series.SetColor(*color)
        self.chartNode.AddAndObservePlotSeriesNodeID(series.GetID())
        self.series[label] = series

    def update(self, tracker: ProgressTracker) -> None:
        """Bring the chart up to date with ``tracker``'s history."""
        newComponents = []
        for _, _, losses in tracker.loss_history[self._lossRows :]:
            newComponents += [k for k in losses if k not in self._lossColumns and k not in newComponents]
        if tracker.history_version != self._version or newComponents:
            self._lossColumns += newComponents
            self._version = tracker.history_version
            self._resetTables()
            if "loss" not in self.series:
                self._addSeries("loss", self.lossTable, "loss", _LOSS_COLOR)
            for i, name in enumerate(self._lossColumns):
                if name not in self.series:
                    self._addSeries(name, self.lossTable, name, _COMPONENT_COLORS[i % len(_COMPONENT_COLORS)], dashed=True)

        loss = self.lossTable.GetTable()
        if len(tracker.loss_history) > self._lossRows:
            for iteration, value, losses in tracker.loss_history[self._lossRows :]:
                row = [float(iteration), float(value)] + [float(losses.get(n, float("nan"))) for n in self._lossColumns]
                for col, v in enumerate(row):
                    loss.GetColumn(col).InsertNextValue(v)
            self._lossRows = len(tracker.loss_history)
            loss.Modified()
            self.lossTable.Modified()
        dice = self.diceTable.GetTable()
        if len(tracker.dice_history) > self._diceRows:
            for iteration, value in tracker.dice_history[self._diceRows :]:
                dice.GetColumn(0).InsertNextValue(float(iteration))
                dice.GetColumn(1).InsertNextValue(float(value))
            self._diceRows = len(tracker.dice_history)
            dice.Modified()
            self.diceTable.Modified()

    def rows(self) -> tuple[int, int]:
        """(loss rows, Dice rows) currently in the tables."""
        return self.lossTable.GetNumberOfRows(), self.diceTable.GetNumberOfRows()

    def remove(self) -> None:
        for node in [*self.series.values(), self.chartNode, self.lossTable, self.diceTable]:
            self.scene.RemoveNode(node)
