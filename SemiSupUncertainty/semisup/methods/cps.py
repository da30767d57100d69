"""Cross pseudo supervision (Chen et al., CVPR 2021), as in SSL4MIS's medical code.

Two networks of the same architecture, initialised differently. Each is trained with
the supervised loss on the labeled images and with cross-entropy against the other
network's hard pseudo label (argmax, no gradient)::

    L = sum_i 0.5 (CE + Dice)(f_i(x_l), y) + lambda(t) * [CE(f_1(x), argmax f_2(x)) + CE(f_2(x), argmax f_1(x))]

with ``lambda(t) = w_max * ramp(t // iterations_per_epoch, L)``, the Gaussian ramp of
UA-MT (:func:`~semisup.methods.ramps.consistency_weight`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import Method, NetworkFactory, StepOutput
from .losses import supervised_loss
from .ramps import consistency_weight

__all__ = ["CPS", "CPSParams", "cps_loss"]


@dataclass
class CPSParams:
    """Constants of CPS, each with its source."""

    # Maximum weight of the CPS term (SSL4MIS train_cross_pseudo_supervision_2D/3D:
    # --consistency 0.1; Chen et al. use 1.5 on VOC and 6 on Cityscapes, without a ramp).
    consistency: float = 0.1
    # Ramp length in epochs of iterations_per_epoch iterations (SSL4MIS: iteration // 150,
    # rampup 200 at 30000 iterations; here UA-MT's 40 x 150 = 6000, the project's budget).
    consistency_rampup: float = 40.0
    iterations_per_epoch: int = 150
    # Cross supervision on the labeled images too (Chen et al. Sec. 3.1: L_cps = L_cps^l +
    # L_cps^u); False is SSL4MIS's code, which applies it to the unlabeled images only.
    cps_on_labeled: bool = True


def cps_loss(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """``CE(a, argmax b) + CE(b, argmax a)``, each a mean over voxels; 0 for an empty batch.

    The pseudo labels carry no gradient: each network is pulled towards the other's
    hard decision (Chen et al. eq. 2).
    """
    if logits_a.shape[0] == 0:
        return logits_a.new_zeros((), dtype=torch.float32)
    a, b = logits_a.float(), logits_b.float()
    pseudo_a = a.detach().argmax(dim=1)
    pseudo_b = b.detach().argmax(dim=1)
    return F.cross_entropy(a, pseudo_b) + F.cross_entropy(b, pseudo_a)


class CPS(Method):
    """Cross pseudo supervision of two networks; both are soft-voted at prediction.

    Chen et al. and SSL4MIS test one network only; the soft vote of both is the
    stronger default here (same cost as UA-DCT's vote, so the two compare fairly) and
    its mutual-information map is the disagreement of the two networks. For the
    single-network number use ``per_model_networks()["model1"]``.

    Attributes
    ----------
    net1, net2:
        The two networks, each from its own ``network_factory()`` call.
    """

    name = "cps"
    supports_sparse_labels = True  # labels enter through supervised_loss only
    Params = CPSParams

    def __init__(self, network_factory: NetworkFactory, num_classes: int, params: CPSParams) -> None:
        super().__init__(network_factory, num_classes, params)
        self.net1 = network_factory()
        self.net2 = network_factory()

    def training_step(self, labeled, unlabeled, step, max_steps) -> StepOutput:
        p: CPSParams = self.params
        x_l, y_l = labeled["image"], labeled["label"]
        x_u = unlabeled["image"] if unlabeled is not None else x_l[:0]
        b_l = x_l.shape[0]
        x = torch.cat([x_l, x_u])
        logits1, logits2 = self.net1(x), self.net2(x)
        sup1 = supervised_loss(logits1[:b_l], y_l)
        sup2 = supervised_loss(logits2[:b_l], y_l)
        cross = slice(0, None) if p.cps_on_labeled else slice(b_l, None)
        cps = cps_loss(logits1[cross], logits2[cross])
        weight = consistency_weight(step, p.consistency, p.consistency_rampup, p.iterations_per_epoch)
        logs = {
            "sup1": sup1.detach(),
            "sup2": sup2.detach(),
            "cps": cps.detach(),
            "consistency_weight": torch.tensor(weight),
        }
        return StepOutput(sup1 + sup2 + weight * cps, logs)

    def inference_networks(self) -> list[nn.Module]:
        return [self.net1, self.net2]

    def per_model_networks(self) -> dict[str, nn.Module]:
        """Each network alone, by name (``"model1"``, ``"model2"``)."""
        return {"model1": self.net1, "model2": self.net2}

    def uncertainty_description(self) -> str:
        return (
            "CPS soft-votes two networks. 'uncertainty' is the predictive entropy (nats) of the mean softmax "
            "over both networks and their MC-dropout samples; 'mutual information' includes the disagreement "
            "between the two networks (with mc_samples = 1 it is exactly their Jensen-Shannon divergence)."
        )
