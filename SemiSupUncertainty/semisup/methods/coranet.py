"""CoraNet: conservative-radical network (Shi et al., IEEE TMI 2021; 003_a8da498be8c87e89).

One trunk, three heads (networks.heads.MultiHeadNet): main D, conservative D_con and
radical D_rad. Two phases:

1. **Pre-training** (``pretrain_iterations``): all three heads on labeled data,
   CE for D, class-weighted CE for D_con / D_rad (paper Eq. 1).
2. **Separate self-training**: on unlabeled images the *certain* region (D_con and
   D_rad agree) is learnt from pseudo labels (C-SN, Eq. 7), the *uncertain* region
   (they disagree) by a mean-teacher consistency (UC-SN, Eq. 8); Eq. 1 keeps
   training all heads on labeled data (Algorithm 1, line 11).

Pseudo labels and masks
-----------------------
The paper relabels the whole unlabeled set every 5 epochs with the current model
(authors' code: ``pred_unlabel`` stores image, pseudo label and mask of every case).
Here a frozen **snapshot** of the network (all three heads) is taken at the start of
self-training and every ``refresh_every`` iterations after; it labels each unlabeled
batch on the fly (eval mode, no gradient). Between two refreshes a given input gets
exactly the pseudo label and mask the precomputed version would hold, without
keeping the dataset in memory and for any unlabeled-set size. One difference: the
labels are computed on the augmented patch the engine draws, not on the raw image
before augmentation; they differ only by the network's lack of exact
flip/rotation equivariance and by context at patch borders. The snapshot is part of
``state_dict``, so a resumed run continues with the same pseudo labels.

Multi-class extension (the paper is binary)
-------------------------------------------
Background-versus-objects costs: D_con weights background ``alpha`` and every
foreground class 1 (mistaking background for any object is ``alpha`` times as
costly: object-cautious); D_rad weights background 1 and every foreground class
``alpha`` (object-eager). For two classes this is exactly Eq. 1's
``w_con = (alpha, 1)``, ``w_rad = (1, alpha)``. The certain region is where the two
heads' argmax labels are equal, so a pixel on which they name two different
foreground classes is uncertain as well. ``con_weights`` / ``rad_weights`` replace
these vectors (e.g. one-vs-rest for one class of interest: ``alpha`` on every
class but k for D_con and ``alpha`` on k alone for D_rad).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ConfigError
from .base import Method, NetworkFactory, StepOutput
from .ema import init_teacher, update_ema
from .losses import DICE_SMOOTH, masked_dice_loss
from .ramps import sigmoid_rampup
from .volume_apply import apply_to_image

__all__ = [
    "CoraNet",
    "CoraNetParams",
    "coranet_class_weights",
    "certain_uncertain_masks",
    "weighted_ce",
    "masked_ce",
    "masked_soft_dice",
    "masked_sq_distance",
]

log = logging.getLogger(__name__)

#: Normaliser guard of the masked losses (CoraNet code: ``mask.sum() + 1e-16``).
MASK_EPS = 1e-16


@dataclass
class CoraNetParams:
    """Constants of CoraNet, each with its source.

    Defaults follow the paper; the authors' code (koncle/CoraNet,
    ``train_ST_3D_VNet.py``) is reproduced with ``supervised="code"``,
    ``certain_dice=True``, ``uncertain_weight=0.01``, ``uncertain_rampup=40``,
    ``uncertain_heads="all"`` and ``refresh_epochs=10``.
    """

    # Misclassification cost ratio alpha (paper III-B: alpha = 5; code w = [1, 5] / [5, 1]).
    alpha: float = 5.0
    # Explicit class-weight vectors of D_con / D_rad (length = classes); None: the
    # background-vs-objects extension of Eq. 1 (module docstring).
    con_weights: list[float] | None = None
    rad_weights: list[float] | None = None
    # Iterations per "epoch" to convert the paper's epoch counts (UA-MT code
    # convention, 150; set it to (unlabeled samples / batch) of your data).
    iterations_per_epoch: int = 150
    # Pre-training on labeled data (paper IV-A: 30 epochs). None: pretrain_epochs x
    # iterations_per_epoch.
    pretrain_iterations: int | None = None
    pretrain_epochs: float = 30.0
    # Pseudo labels / masks refresh (paper IV-A: every 5 epochs; 3D code pred_step 10).
    # None: refresh_epochs x iterations_per_epoch.
    refresh_every: int | None = None
    refresh_epochs: float = 5.0
    # Labeled loss: "paper" = CE(D) + CE_con + CE_rad (Eq. 1); "code" =
    # (CE(D) + Dice(D) + CE_con + CE_rad) / 4 (train_ST_3D_VNet.py).
    supervised: str = "paper"
    # Certain region: CE only (paper Eq. 7) or (CE + masked Dice) / 2 (code).
    certain_dice: bool = False
    # Dice terms: one ratio per sample and class (code; its 3D binary patches always
    # hold the object) or per class over the batch (SSL4MIS 2D multi-class, where a
    # class is often absent from a slice). No effect on the ACDC outcome measured.
    dice_over_batch: bool = False
    # Weight of L_c-sn (paper IV-D3: 1:1 with L_cnt; code 1).
    certain_weight: float = 1.0
    # Weight of L_cnt (paper IV-D3: 1; code 0.1 x consistency 0.1 = 0.01).
    uncertain_weight: float = 1.0
    # Gaussian ramp of L_cnt in epochs since self-training began (paper: none, 0;
    # code consistency_rampup 40).
    uncertain_rampup: float = 0.0
    # Heads in L_cnt: "main" (paper Eq. 8: F vs F') or "all" (code: mean of the three).
    uncertain_heads: str = "main"
    # EMA smoothing beta (paper IV-A and code: 0.99).
    ema_alpha: float = 0.99
    # Teacher BatchNorm buffers: "average" (EMA) or "own" (reference behaviour).
    ema_buffers: str = "average"


def coranet_class_weights(num_classes: int, alpha: float) -> tuple[list[float], list[float]]:
    """``(w_con, w_rad)``: background-vs-objects costs (paper Eq. 1, extended).

    ``w_con = (alpha, 1, ..., 1)``, ``w_rad = (1, alpha, ..., alpha)``.
    """
    if num_classes < 2:
        raise ValueError(f"CoraNet needs at least 2 classes, got {num_classes}")
    return [float(alpha)] + [1.0] * (num_classes - 1), [1.0] + [float(alpha)] * (num_classes - 1)


def certain_uncertain_masks(con_logits: torch.Tensor, rad_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Certain and uncertain masks (paper Eqs. 5-6), float ``(B, *spatial)``.

    Certain where ``argmax(D_con) == argmax(D_rad)``; uncertain the complement (the
    XOR of the two binary predictions in the two-class case).
    """
    certain = (con_logits.argmax(dim=1) == rad_logits.argmax(dim=1)).float()
    return certain, 1.0 - certain


def weighted_ce(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Class-weighted cross-entropy, ``sum_z w_{y_z} ce_z / sum_z w_{y_z}``.

    The weighted mean of PyTorch's ``cross_entropy(weight=...)``, as the authors'
    ``nn.CrossEntropyLoss(weight=w_con)``; Eq. 1 writes the plain sum, which
    differs by a per-batch constant. ``target`` is ``(B, *spatial)`` or ``(B, 1, *spatial)``.
    """
    if target.ndim == logits.ndim:
        target = target[:, 0]
    return F.cross_entropy(logits.float(), target.long(), weight=weights.to(logits.device, torch.float32))


def masked_ce(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum(mask * ce) / (sum(mask) + 1e-16)`` (Eq. 7, normalised as the code).

    ``target`` and ``mask`` are ``(B, *spatial)``; an empty mask gives 0.
    """
    ce = F.cross_entropy(logits.float(), target.long(), reduction="none")
    return (mask * ce).sum() / (mask.sum() + MASK_EPS)


def masked_soft_dice(
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    smooth: float = DICE_SMOOTH,
    over_batch: bool = False,
) -> torch.Tensor:
    """Soft Dice loss restricted to ``mask`` (CoraNet code ``DiceLoss(..., mask)``).

    Per sample and class, background included, linear denominators:
    ``1 - mean_{b,c} (2 sum m p y + s) / (sum m (p + y) + s)``. ``over_batch`` sums
    over the batch as well before the ratio (one ratio per class). MONAI's
    ``MaskedDiceLoss`` underneath (``losses.masked_dice_loss``: softmax, then mask).
    ``target`` and ``mask`` are ``(B, *spatial)`` or ``(B, 1, *spatial)``.
    """
    if target.ndim == logits.ndim - 1:
        target = target.unsqueeze(1)
    if mask.ndim == logits.ndim - 1:
        mask = mask.unsqueeze(1)
    return masked_dice_loss(
        logits, target, mask, include_background=True, batch=over_batch, squared_pred=False, smooth=smooth
    )


def masked_sq_distance(p_student: torch.Tensor, p_teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked voxels of ``||p_S - p_T||^2`` (sum over classes; Eq. 8, code normalisation).

    ``mask`` is ``(B, *spatial)``; normalised by ``sum(mask) + 1e-16`` (the code's
    ``softmax_mse_loss`` summed over channels), so an empty mask gives 0.
    """
    dist = ((p_student - p_teacher) ** 2).sum(dim=1)
    return (mask * dist).sum() / (mask.sum() + MASK_EPS)


class CoraNet(Method):
    """Pre-training of three heads, then separate self-training of certain / uncertain regions."""

    name = "coranet"
    Params = CoraNetParams

    def __init__(self, network_factory: NetworkFactory, num_classes: int, params: CoraNetParams) -> None:
        super().__init__(network_factory, num_classes, params)
        p = params
        if p.supervised not in ("paper", "code"):
            raise ConfigError(f"coranet: supervised must be 'paper' or 'code', got {p.supervised!r}")
        if p.uncertain_heads not in ("main", "all"):
            raise ConfigError(f"coranet: uncertain_heads must be 'main' or 'all', got {p.uncertain_heads!r}")
        if p.alpha <= 0:
            raise ConfigError(f"coranet: alpha must be > 0 (paper: 5), got {p.alpha}")
        if p.iterations_per_epoch < 1:
            raise ConfigError(f"coranet: iterations_per_epoch must be >= 1, got {p.iterations_per_epoch}")
        if num_classes < 2:
            raise ConfigError(f"coranet needs at least 2 classes, got {num_classes}")
        w_con, w_rad = coranet_class_weights(num_classes, p.alpha)
        for key, given in (("con_weights", p.con_weights), ("rad_weights", p.rad_weights)):
            if given is not None and (len(given) != num_classes or any(float(w) <= 0 for w in given)):
                raise ConfigError(f"coranet: {key} needs {num_classes} positive numbers, got {given}")
        w_con = [float(w) for w in p.con_weights] if p.con_weights is not None else w_con
        w_rad = [float(w) for w in p.rad_weights] if p.rad_weights is not None else w_rad
        self.register_buffer("w_con", torch.tensor(w_con, dtype=torch.float32), persistent=False)
        self.register_buffer("w_rad", torch.tensor(w_rad, dtype=torch.float32), persistent=False)

        self.pretrain_iterations = int(
            p.pretrain_iterations if p.pretrain_iterations is not None else round(p.pretrain_epochs * p.iterations_per_epoch)
        )
        self.refresh_every = int(
            p.refresh_every if p.refresh_every is not None else round(p.refresh_epochs * p.iterations_per_epoch)
        )
        if self.pretrain_iterations < 0 or self.refresh_every < 1:
            raise ConfigError(
                f"coranet: pretrain_iterations must be >= 0 and refresh_every >= 1, got "
                f"{self.pretrain_iterations} and {self.refresh_every}"
            )

        self.net = network_factory(heads="coranet")
        if not hasattr(self.net, "forward_heads"):
            raise ConfigError("coranet: the network factory did not build a multi-head network")
        self.teacher = init_teacher(copy.deepcopy(self.net))
        # Frozen pseudo-label / mask generator (see the module docstring).
        self.snapshot = init_teacher(copy.deepcopy(self.net))
        self.snapshot.eval()
        self._snapshot_step = -1  # iteration at which the snapshot was taken; -1: none yet
        # Object pixels pseudo-labelled since the last refresh (a tensor: read only at refresh,
        # so that training does not wait on the device every step).
        self._object_pixels: torch.Tensor | int = 0
        self._pseudo_batches = 0  # unlabeled batches pseudo-labelled since the last refresh
        self._warned_background_only = False

    # -- state ---------------------------------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        return {"snapshot_step": int(self._snapshot_step)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self._snapshot_step = int(state.get("snapshot_step", -1))

    def train(self, mode: bool = True) -> "CoraNet":
        super().train(mode)
        self.snapshot.eval()  # pseudo labels: running statistics, no dropout
        return self

    # -- schedule ------------------------------------------------------------------
    def in_self_training(self, step: int) -> bool:
        return step >= self.pretrain_iterations

    def refresh_snapshot_if_due(self, step: int) -> bool:
        """Copy the network into the snapshot at the start of self-training and every ``refresh_every``."""
        if not self.in_self_training(step):
            return False
        if self._snapshot_step >= 0 and step - self._snapshot_step < self.refresh_every:
            return False
        if self._pseudo_batches and int(self._object_pixels) == 0 and not self._warned_background_only:
            log.warning(
                "coranet: the pseudo labels of iterations %d-%d hold no object pixel: pre-training "
                "(pretrain_iterations=%d) ended before the network segments, so self-training only "
                "confirms background; lengthen pretrain_iterations",
                self._snapshot_step, step - 1, self.pretrain_iterations,
            )
            self._warned_background_only = True
        self.snapshot.load_state_dict(self.net.state_dict())
        self.snapshot.eval()
        self._snapshot_step = int(step)
        self._object_pixels, self._pseudo_batches = 0, 0
        log.info("coranet: pseudo labels and masks refreshed at iteration %d", step)
        return True

    def on_iteration_start(self, step: int, context: Any) -> None:
        self.refresh_snapshot_if_due(step)

    def uncertain_loss_weight(self, step: int) -> float:
        """``uncertain_weight * ramp(epochs since self-training began, uncertain_rampup)``."""
        p = self.params
        epoch = max(0, step - self.pretrain_iterations) // p.iterations_per_epoch
        return p.uncertain_weight * sigmoid_rampup(epoch, p.uncertain_rampup)

    # -- losses --------------------------------------------------------------------
    def labeled_loss(self, heads: dict[str, torch.Tensor], target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Eq. 1 on a labeled batch (or the code's mean with Dice); ``target`` ``(B, 1, *)``."""
        y = target[:, 0].long()
        ce = F.cross_entropy(heads["main"].float(), y)
        ce_con = weighted_ce(heads["con"], y, self.w_con)
        ce_rad = weighted_ce(heads["rad"], y, self.w_rad)
        logs = {"ce": ce.detach(), "ce_con": ce_con.detach(), "ce_rad": ce_rad.detach()}
        if self.params.supervised == "code":
            dice = masked_soft_dice(
                heads["main"], y, torch.ones_like(y, dtype=torch.float32), over_batch=self.params.dice_over_batch
            )
            logs["dice"] = dice.detach()
            return (ce + dice + ce_con + ce_rad) / 4.0, logs
        return ce + ce_con + ce_rad, logs

    @torch.no_grad()
    def pseudo_labels(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Snapshot's pseudo label (argmax of D) and certain / uncertain masks, ``(B, *spatial)``."""
        was_training = self.snapshot.training
        self.snapshot.eval()
        heads = self.snapshot.forward_heads(x)
        self.snapshot.train(was_training)
        certain, uncertain = certain_uncertain_masks(heads["con"], heads["rad"])
        return heads["main"].argmax(dim=1), certain, uncertain

    def training_step(self, labeled, unlabeled, step, max_steps) -> StepOutput:
        p = self.params
        x_l, y_l = labeled["image"], labeled["label"]
        b_l = x_l.shape[0]
        self_training = self.in_self_training(step) and unlabeled is not None and unlabeled["image"].shape[0] > 0
        if not self_training:
            sup, logs = self.labeled_loss(self.net.forward_heads(x_l), y_l)
            logs["sup"] = sup.detach()
            return StepOutput(sup, logs)

        self.refresh_snapshot_if_due(step)  # no-op when on_iteration_start already did it
        x_u = unlabeled["image"]
        heads = self.net.forward_heads(torch.cat([x_l, x_u]))
        sup, logs = self.labeled_loss({k: v[:b_l] for k, v in heads.items()}, y_l)
        plab, certain, uncertain = self.pseudo_labels(x_u)
        objects = plab > 0

        main_u = heads["main"][b_l:]
        certain_loss = masked_ce(main_u, plab, certain)
        if p.certain_dice:
            certain_loss = 0.5 * (
                certain_loss + masked_soft_dice(main_u, plab, certain, over_batch=p.dice_over_batch)
            )

        with torch.no_grad():
            t_heads = self.teacher.forward_heads(x_u)
        names = ("main",) if p.uncertain_heads == "main" else tuple(heads)
        uncertain_loss = sum(
            masked_sq_distance(torch.softmax(heads[n][b_l:].float(), 1), torch.softmax(t_heads[n].float(), 1), uncertain)
            for n in names
        ) / len(names)
        w_unc = self.uncertain_loss_weight(step)
        loss = sup + p.certain_weight * certain_loss + w_unc * uncertain_loss
        logs.update(
            sup=sup.detach(),
            certain=certain_loss.detach(),
            uncertain=uncertain_loss.detach(),
            uncertain_weight=torch.tensor(w_unc),
            uncertain_ratio=uncertain.mean().detach(),
            # Stays 0 when pre-training ended before the network found any object:
            # self-training then only confirms background (docs/methods.md).
            pseudo_foreground=objects.float().mean(),
        )
        self._object_pixels = self._object_pixels + objects.sum()
        self._pseudo_batches += 1
        return StepOutput(loss, logs)

    def after_optimizer_step(self, step: int) -> None:
        # Algorithm 1, line 3: the teacher starts self-training as a copy of the
        # pre-trained network (decay 0 = copy); then beta = ema_alpha, as the code,
        # whose global step makes its warm-up min(1 - 1/(t+1), beta) already beta.
        decay = self.params.ema_alpha if self.in_self_training(step) else 0.0
        update_ema(self.teacher, [self.net], decay, buffers=self.params.ema_buffers)

    # -- inference -----------------------------------------------------------------
    def inference_networks(self) -> list[nn.Module]:
        # Test phase: F(E, D) only (paper III-D2, Alg. 1): MultiHeadNet.forward and
        # mc_forward compute the trunk and the main head alone, D_con / D_rad never run.
        return [self.net]

    own_uncertainty_name = "uncertain_region"

    def own_uncertainty_map(self, image: torch.Tensor) -> torch.Tensor:
        return self.region_uncertainty(image)

    @torch.no_grad()
    def region_uncertainty(self, image: torch.Tensor) -> torch.Tensor:
        """CoraNet's own uncertainty: 1 where D_con and D_rad disagree, 0 elsewhere.

        Parameters
        ----------
        image:
            Preprocessed ``(1, 1, *spatial)``; a 2D network runs a 3D volume slice
            by slice along z. Any size (zero-padded to the divisor, cropped back).

        Returns
        -------
        torch.Tensor
            Float ``(1, 1, *spatial)`` map of the uncertain region, from the trained
            network in eval mode (the heads the optimizer kept training, not the
            pseudo-label snapshot).
        """
        was_training = self.net.training
        self.net.eval()
        try:

            def fn(x: torch.Tensor) -> torch.Tensor:
                heads = self.net.forward_heads(x)
                return certain_uncertain_masks(heads["con"], heads["rad"])[1].unsqueeze(1)

            return apply_to_image(fn, image, self.net.spatial_dims, self.net.divisor)
        finally:
            self.net.train(was_training)

    def uncertainty_description(self) -> str:
        return (
            "predictive entropy (nats) of the main head's mean softmax over MC-dropout samples "
            "(the conservative and radical heads are not used at prediction). CoraNet's own "
            "uncertainty, the region where the conservative (background weight alpha) and radical "
            "(object weight alpha) heads disagree, is a binary map from CoraNet.region_uncertainty(image)"
        )
