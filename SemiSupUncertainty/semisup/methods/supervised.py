"""Supervised baseline: the same network trained on the labeled cases only."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from .base import Method, NetworkFactory, StepOutput
from .losses import supervised_loss

__all__ = ["Supervised"]


@dataclass
class SupervisedParams:
    """No constants: loss is 0.5 (CE + Dice) as every method's supervised term."""


class Supervised(Method):
    name = "supervised"
    supports_sparse_labels = True  # labels enter through supervised_loss only
    Params = SupervisedParams
    uses_unlabeled = False

    def __init__(self, network_factory: NetworkFactory, num_classes: int, params: SupervisedParams) -> None:
        super().__init__(network_factory, num_classes, params)
        self.student = network_factory()

    def training_step(self, labeled, unlabeled, step, max_steps) -> StepOutput:
        logits = self.student(labeled["image"])
        loss = supervised_loss(logits, labeled["label"])
        return StepOutput(loss, {"sup": loss.detach()})

    def inference_networks(self) -> list[nn.Module]:
        return [self.student]
