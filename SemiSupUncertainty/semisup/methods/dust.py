"""DUST: self-training with dual uncertainty (Qiu et al.; 004_578d44feb07d83d9).

Network: the SSL4MIS 2D U-Net with a second, bilinear-upsampling decoder
(``network_factory(aux_decoder=True)``, :meth:`UNet2D.forward_dual`). There is no
auxiliary decoder for the 3D backbones: DUST needs ``network.name: unet2d`` and the
factory raises a ``ConfigError`` saying so.

Schedule (Algorithm 1)
----------------------
- **Stage 0, pre-training** (``pretrain_iterations``): supervised loss only; K
  snapshots of the network evenly spaced, the K-th being the network at the end of
  pre-training (the live network itself at that moment, so K - 1 copies are kept).
- **Ranking** (at iteration ``pretrain_iterations``): sample-level uncertainty of
  each unlabeled case (Eq. 1) = ``mean_{i<K} mean((F_i(x) - F_K(x))^2)`` on softmax
  outputs over every voxel and class, the whole case (2D networks slice by slice).
  Ascending order; the first ``first_stage_fraction`` of the cases are "reliable".
- **Stage 1** (``stage_iterations``): self-training on the labeled data and the
  reliable cases (``context.set_unlabeled_subset``).
- **Stage 2** (to the end of training): all unlabeled cases.

Pseudo labels come from a frozen copy of the network (the "teacher" T of Algorithm 1),
taken at the start of each stage (lines 4 and 6: generated for D_u1 from the
pre-trained model, regenerated for all of D_U before retraining); it labels each
unlabeled batch on the fly in eval mode (argmax of the main decoder). Stage, ranking
and selected names are saved with ``state_dict`` (``get_extra_state``) and the
subset is re-applied in :meth:`on_iteration_start`, which the engine also calls on
resume.

Losses
------
- ``D_kl = sum_c p_main,c (log p_main,c - log p_aux,c)`` per pixel (Eq. 2), student
  decoders on the unlabeled batch; gradients flow through both terms of Eq. 4 (the
  rectified pseudo-label loss of Zheng & Yang, which DUST adopts, does not detach).
- ``L_unsup = mean(exp(-D_kl) * CE(F(x), y_hat) + D_kl)`` (Eqs. 3-4).
- ``L_sup = 0.5 (Dice + CE)`` (Eq. 5) on the main decoder, plus the same on the
  auxiliary decoder (``aux_supervised_weight``, ours: the paper trains "the network"
  and is silent on the auxiliary decoder; an unsupervised auxiliary decoder would
  start self-training far from the main one, so exp(-D_kl) would mute the pseudo
  labels until the KL term had pulled it in. 0 gives the literal Eq. 5).
- ``L_total = L_sup + L_unsup`` (Eq. 6).
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ConfigError
from .base import Method, NetworkFactory, StepOutput, TrainingContext
from .ema import init_teacher
from .losses import supervised_loss
from .volume_apply import apply_to_image

__all__ = [
    "DUST",
    "DUSTParams",
    "kl_uncertainty_map",
    "rectified_pseudo_label_loss",
    "sample_uncertainty",
    "split_by_uncertainty",
    "snapshot_iterations",
]

log = logging.getLogger(__name__)

#: Stage numbers stored in the checkpoint.
PRETRAIN, STAGE_RELIABLE, STAGE_ALL = 0, 1, 2


@dataclass
class DUSTParams:
    """Constants of DUST, each with its source."""

    # Iterations per "epoch" to convert the paper's epoch counts (UA-MT code
    # convention, 150; set it to (unlabeled slices / batch) of your data).
    iterations_per_epoch: int = 150
    # Pre-training (paper 4.2: "each training phase was iterated for 200 epochs").
    # None: pretrain_epochs x iterations_per_epoch.
    pretrain_iterations: int | None = None
    pretrain_epochs: float = 200.0
    # Stage 1 length (paper 4.2: 200 epochs per phase); stage 2 runs to the end.
    stage_iterations: int | None = None
    stage_epochs: float = 200.0
    # K snapshots during pre-training (paper 3.1: K not stated; ST++, ref. [52],
    # whose selection DUST adapts, saves three checkpoints). K >= 2.
    snapshots: int = 3
    # Fraction of the unlabeled cases, most stable first, in stage 1 (paper 3.1: 50 %).
    first_stage_fraction: float = 0.5
    # Weight of L_unsup (paper Eq. 6: 1).
    unsup_weight: float = 1.0
    # Supervised Eq. 5 on the auxiliary decoder too (ours; 0 = main decoder only).
    aux_supervised_weight: float = 1.0
    # Stop the gradient through exp(-D_kl) (ours; False as the rectified loss DUST adopts).
    detach_weight: bool = False


def snapshot_iterations(pretrain_iterations: int, k: int) -> list[int]:
    """Completed-iteration counts after which snapshots 1..K-1 are taken.

    Evenly spaced, ``round(i * P / K)`` for ``i = 1..K-1``; snapshot K is the network
    after all ``P`` pre-training iterations.
    """
    return [int(round(i * pretrain_iterations / k)) for i in range(1, k)]


def sample_uncertainty(snapshot_probs: Sequence[torch.Tensor], final_probs: torch.Tensor) -> float:
    """Eq. 1: ``sum_{i<K} mean[(F_i(x) - F_K(x))^2] / (K - 1)`` on softmax outputs.

    Parameters
    ----------
    snapshot_probs:
        ``F_1(x) .. F_{K-1}(x)``, each ``(..., C, *spatial)``.
    final_probs:
        ``F_K(x)``, same shape.
    """
    if not snapshot_probs:
        raise ValueError("sample_uncertainty needs at least one earlier snapshot (K >= 2)")
    total = sum(float(((p.float() - final_probs.float()) ** 2).mean()) for p in snapshot_probs)
    return total / len(snapshot_probs)


def split_by_uncertainty(names: Sequence[str], scores: Sequence[float], fraction: float) -> tuple[list[str], list[str]]:
    """Sort ascending (ties by name) and split: first ``max(1, floor(fraction * n))`` cases, the rest.

    The floor follows ST++'s ``[: n // 2]`` for 50 %; at least one case goes first
    when there is any.
    """
    if len(names) != len(scores):
        raise ValueError(f"{len(names)} names but {len(scores)} scores")
    order = sorted(zip(scores, names), key=lambda sn: (sn[0], sn[1]))
    ranked = [n for _, n in order]
    n_first = min(len(ranked), max(1, int(math.floor(fraction * len(ranked))))) if ranked else 0
    return ranked[:n_first], ranked[n_first:]


def kl_uncertainty_map(main_logits: torch.Tensor, aux_logits: torch.Tensor) -> torch.Tensor:
    """Pixel-level uncertainty ``KL(main || aux)`` (Eq. 2), ``(B, *spatial)``, in nats."""
    log_p = torch.log_softmax(main_logits.float(), dim=1)
    log_q = torch.log_softmax(aux_logits.float(), dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def rectified_pseudo_label_loss(ce: torch.Tensor, d_kl: torch.Tensor, detach_weight: bool = False) -> torch.Tensor:
    """Eq. 4: ``mean(exp(-D_kl) * CE + D_kl)`` over pixels."""
    weight = torch.exp(-(d_kl.detach() if detach_weight else d_kl))
    return (weight * ce + d_kl).mean()


class DUST(Method):
    """Self-training in two stages of increasing difficulty with a KL-rectified pseudo-label loss."""

    name = "dust"
    supports_sparse_labels = True  # labels enter through supervised_loss only
    Params = DUSTParams

    def __init__(self, network_factory: NetworkFactory, num_classes: int, params: DUSTParams) -> None:
        super().__init__(network_factory, num_classes, params)
        p = params
        if p.iterations_per_epoch < 1:
            raise ConfigError(f"dust: iterations_per_epoch must be >= 1, got {p.iterations_per_epoch}")
        if int(p.snapshots) < 2:
            raise ConfigError(f"dust: snapshots (K) must be >= 2 (Eq. 1 compares K-1 snapshots with the last), got {p.snapshots}")
        if not 0.0 < p.first_stage_fraction <= 1.0:
            raise ConfigError(f"dust: first_stage_fraction must be in (0, 1] (paper: 0.5), got {p.first_stage_fraction}")
        self.pretrain_iterations = int(
            p.pretrain_iterations if p.pretrain_iterations is not None else round(p.pretrain_epochs * p.iterations_per_epoch)
        )
        self.stage_iterations = int(
            p.stage_iterations if p.stage_iterations is not None else round(p.stage_epochs * p.iterations_per_epoch)
        )
        if self.pretrain_iterations < int(p.snapshots):
            raise ConfigError(
                f"dust: pretrain_iterations ({self.pretrain_iterations}) must be at least snapshots "
                f"({p.snapshots}) so that the snapshots are distinct"
            )
        if self.stage_iterations < 0:
            raise ConfigError(f"dust: stage_iterations must be >= 0, got {self.stage_iterations}")

        try:
            self.net = network_factory(aux_decoder=True)
        except ConfigError as exc:
            raise ConfigError(
                f"dust needs a network with DUST's bilinear auxiliary decoder: set network.name to 'unet2d' "
                f"and data.spatial_dims to 2 ({exc})"
            ) from None
        self.snapshot_at = snapshot_iterations(self.pretrain_iterations, int(p.snapshots))
        self.snapshot_nets = nn.ModuleList(init_teacher(copy.deepcopy(self.net)) for _ in self.snapshot_at)
        # Pseudo-label generator, refreshed at the start of each stage.
        self.generator = init_teacher(copy.deepcopy(self.net))
        self._frozen_eval()

        self._stage = PRETRAIN
        self._snapshots_taken = 0
        self._ranked: list[str] = []
        self._scores: list[float] = []
        self._first: list[str] = []
        self._warned = False

    # -- state ---------------------------------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        return {
            "stage": int(self._stage),
            "snapshots_taken": int(self._snapshots_taken),
            "ranked": list(self._ranked),
            "scores": [float(s) for s in self._scores],
            "first_stage": list(self._first),
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self._stage = int(state.get("stage", PRETRAIN))
        self._snapshots_taken = int(state.get("snapshots_taken", 0))
        self._ranked = [str(n) for n in state.get("ranked", [])]
        self._scores = [float(s) for s in state.get("scores", [])]
        self._first = [str(n) for n in state.get("first_stage", [])]

    @property
    def stage(self) -> int:
        """0 pre-training, 1 reliable cases, 2 all cases."""
        return self._stage

    @property
    def ranking(self) -> list[tuple[str, float]]:
        """Unlabeled cases with their sample-level uncertainty, most stable first."""
        return list(zip(self._ranked, self._scores))

    @property
    def first_stage_cases(self) -> list[str]:
        return list(self._first)

    def _frozen_eval(self) -> None:
        for m in (*self.snapshot_nets, self.generator):
            m.eval()

    def train(self, mode: bool = True) -> "DUST":
        super().train(mode)
        self._frozen_eval()  # snapshots and pseudo-label generator: running statistics, no dropout
        return self

    # -- schedule ------------------------------------------------------------------
    def target_stage(self, step: int) -> int:
        if step < self.pretrain_iterations:
            return PRETRAIN
        if step < self.pretrain_iterations + self.stage_iterations:
            return STAGE_RELIABLE
        return STAGE_ALL

    def on_iteration_start(self, step: int, context: TrainingContext) -> None:
        target = self.target_stage(step)
        if target != PRETRAIN and not self._ranked:
            self.rank_unlabeled(context)
        if target != self._stage:
            self._refresh_generator()
            log.info("dust: stage %d begins at iteration %d", target, step)
            self._stage = target
        # Applied every iteration (a no-op when unchanged): re-applies the subset after a resume.
        context.set_unlabeled_subset(self._first if self._stage == STAGE_RELIABLE and self._first else None)

    def _refresh_generator(self) -> None:
        self.generator.load_state_dict(self.net.state_dict())
        self.generator.eval()

    @torch.no_grad()
    def _probs(self, net: nn.Module, image: torch.Tensor) -> torch.Tensor:
        return apply_to_image(lambda x: torch.softmax(net(x).float(), dim=1), image, net.spatial_dims, net.divisor)

    @torch.no_grad()
    def rank_unlabeled(self, context: TrainingContext) -> list[tuple[str, float]]:
        """Score every unlabeled case (Eq. 1) with the snapshots and the current network (F_K)."""
        if self._snapshots_taken < len(self.snapshot_nets):
            raise RuntimeError(
                f"dust: only {self._snapshots_taken} of {len(self.snapshot_nets)} pre-training snapshots were taken; "
                f"was pre-training interrupted by a change of pretrain_iterations?"
            )
        was_training = self.net.training
        self.net.eval()
        names, scores = [], []
        try:
            for case in context.unlabeled_cases():
                image = case["image"]
                final = self._probs(self.net, image)
                # One snapshot volume at a time: Eq. 1 is a mean of per-snapshot terms.
                terms = [sample_uncertainty([self._probs(s, image)], final) for s in self.snapshot_nets]
                names.append(str(case["name"]))
                scores.append(sum(terms) / len(terms))
        finally:
            self.net.train(was_training)
        first, _ = split_by_uncertainty(names, scores, self.params.first_stage_fraction)
        order = {n: s for n, s in zip(names, scores)}
        self._ranked = sorted(names, key=lambda n: (order[n], n))
        self._scores = [order[n] for n in self._ranked]
        self._first = first
        log.info("dust: ranked %d unlabeled cases; %d join in stage 1: %s", len(names), len(first), first)
        return self.ranking

    # -- training ------------------------------------------------------------------
    def training_step(self, labeled, unlabeled, step, max_steps) -> StepOutput:
        p = self.params
        if not self._warned:
            self._warned = True
            if max_steps <= self.pretrain_iterations + self.stage_iterations:
                log.warning(
                    "dust: train.iterations %d ends before stage 2 (pre-training %d + stage 1 %d iterations)",
                    max_steps, self.pretrain_iterations, self.stage_iterations,
                )
        x_l, y_l = labeled["image"], labeled["label"]
        b_l = x_l.shape[0]
        use_unlabeled = self._stage != PRETRAIN and unlabeled is not None and unlabeled["image"].shape[0] > 0
        x = torch.cat([x_l, unlabeled["image"]]) if use_unlabeled else x_l
        main, aux = self.net.forward_dual(x)

        sup_main = supervised_loss(main[:b_l], y_l)
        sup = sup_main
        logs = {"sup_main": sup_main.detach()}
        if p.aux_supervised_weight:
            sup_aux = supervised_loss(aux[:b_l], y_l)
            sup = sup + p.aux_supervised_weight * sup_aux
            logs["sup_aux"] = sup_aux.detach()
        logs["sup"] = sup.detach()
        if not use_unlabeled:
            return StepOutput(sup, logs)

        with torch.no_grad():
            pseudo = self.generator(unlabeled["image"]).argmax(dim=1)
        main_u, aux_u = main[b_l:], aux[b_l:]
        d_kl = kl_uncertainty_map(main_u, aux_u)
        ce = F.cross_entropy(main_u.float(), pseudo, reduction="none")
        unsup = rectified_pseudo_label_loss(ce, d_kl, p.detach_weight)
        logs.update(unsup=unsup.detach(), kl=d_kl.mean().detach(), stage=torch.tensor(float(self._stage)))
        return StepOutput(sup + p.unsup_weight * unsup, logs)

    def after_optimizer_step(self, step: int) -> None:
        done = step + 1  # iterations completed
        if self._snapshots_taken < len(self.snapshot_at) and done == self.snapshot_at[self._snapshots_taken]:
            self.snapshot_nets[self._snapshots_taken].load_state_dict(self.net.state_dict())
            self.snapshot_nets[self._snapshots_taken].eval()
            self._snapshots_taken += 1
            log.info("dust: snapshot %d of %d taken after iteration %d", self._snapshots_taken, self.params.snapshots, done)

    # -- inference -----------------------------------------------------------------
    def inference_networks(self) -> list[nn.Module]:
        # UNet2D.forward is the main (transposed-conv) decoder; the auxiliary one is not run.
        return [self.net]

    own_uncertainty_name = "kl_divergence"

    def own_uncertainty_map(self, image: torch.Tensor) -> torch.Tensor:
        return self.pixel_uncertainty(image)

    @torch.no_grad()
    def pixel_uncertainty(self, image: torch.Tensor) -> torch.Tensor:
        """DUST's own uncertainty: ``KL(main || aux)`` per voxel, in nats.

        Parameters
        ----------
        image:
            Preprocessed ``(1, 1, *spatial)``; a 3D volume runs slice by slice along z.

        Returns
        -------
        torch.Tensor
            ``(1, 1, *spatial)`` float map, eval mode (no dropout).
        """
        was_training = self.net.training
        self.net.eval()
        try:

            def fn(x: torch.Tensor) -> torch.Tensor:
                main, aux = self.net.forward_dual(x)
                return kl_uncertainty_map(main, aux).unsqueeze(1)

            return apply_to_image(fn, image, self.net.spatial_dims, self.net.divisor)
        finally:
            self.net.train(was_training)

    def uncertainty_description(self) -> str:
        return (
            "predictive entropy (nats) of the main decoder's mean softmax over MC-dropout samples. "
            "DUST's own pixel-level uncertainty, KL(main decoder || bilinear auxiliary decoder) in nats "
            "(0 where the two decoders agree), comes from DUST.pixel_uncertainty(image); the sample-level "
            "ranking of the unlabeled cases is DUST.ranking"
        )
