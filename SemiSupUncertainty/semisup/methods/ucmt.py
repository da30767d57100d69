"""UCMT: uncertainty-guided collaborative mean teacher (Shen et al., IJCAI 2023; 001_3cf26a3bc66852cd).

Three networks of one architecture, each from its own ``network_factory()`` call
(different initialisations): students S1, S2 trained by the optimizer, and a teacher
T that is the EMA of a weighted average of the students (eq. 6; weights below). One engine iteration runs both
steps of Algorithm 1:

Step 1 (original images). ``L_s`` = Dice(S1, Y) + Dice(S2, Y) on the labeled images;
``L_u = L_cps + L_mts`` on the unlabeled images, with cross pseudo supervision
``L_cps`` = Dice(S1, argmax S2) + Dice(S2, argmax S1) (eq. 5) and mean-teacher
supervision ``L_mts`` = Dice(S1, Y0) + Dice(S2, Y0), ``Y0 = argmax T`` (eq. 7).

Uncertainty (eq. 8), from the step-1 predictions: ``U_m = H(0.5 (softmax S_m +
softmax T))``, m = 1, 2 (entropy in nats, no MC dropout).

Step 2 (UMIX images). The labeled images and their labels, and the unlabeled images
and their teacher pseudo labels ``Y0``, are mixed by :func:`~.umix.umix` with
``U1``/``U2``; the step-1 losses are repeated on the mixed images, the mixed ``Y0``
being the MTS target (Algorithm 1, line 16).

Loss of the iteration: ``(L_s + lambda L_u) + (L_s' + lambda L_u')``, one backward,
one optimizer step; then the teacher EMA.

Deviations from the authors' code, and why
------------------------------------------
- The code does an optimizer step (and an EMA update) after each of the two steps.
  The engine does one optimizer step per iteration, so the two steps' losses are
  summed into one. The uncertainty maps are taken from the step-1 predictions in
  both cases (the code does the same: it never re-predicts after its first update).
  An iteration here therefore counts as the code's half iteration in updates; the
  paper's footnote 3 ("trained for half of the epochs") counts an iteration as both.
- The code feeds each student its own augmented (randomly blurred) view; the
  engine gives one batch, so both students see the same images (the paper does not
  mention views; the students still differ by initialisation and CPS).
- 3D code, step 2: the MTS target is the un-mixed ``Y0`` (a bug: its own 2D code
  and Algorithm 1 use the mixed one); the mixed one is used here.
- Teacher EMA weights: eq. 6 averages the students, ``(theta_1 + theta_2) / 2``; the
  code weights them 0.99 / 0.01. With students from different random
  initialisations (as the paper prescribes) the average of their weights is not a
  network that segments: the two students sit in unrelated basins, and permuted
  hidden units do not line up. On the synthetic e2e data (V-Net, 4 base filters,
  60 iterations, AdamW 3e-3) the students reached test Dice 0.75 and 0.39, their
  weight midpoint and the paper-form teacher 0.0, the code-form teacher 0.55. The code's weighting is therefore the
  default (``ema_weights: code``) and eq. 6 an option (``ema_weights: paper``),
  sensible only when the students share most of their initialisation (e.g. a
  common pretrained encoder).
- Per-network losses are summed as in eqs. 3, 5 and 7; the 3D code halves L_s,
  L_cps and L_mts alike (a global factor 1/2, same ratios); the 2D code halves only
  L_cps and L_mts, i.e. its unsupervised weight is effectively 0.05.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..config import ConfigError
from ..inference.uncertainty import predictive_entropy
from ..networks.base import has_dropout
from .base import Method, NetworkFactory, StepOutput
from .ema import init_teacher, update_ema
from .losses import class_argmax, soft_dice_loss
from .ramps import ema_decay, sigmoid_rampup
from .umix import UMixMoves, apply_moves, umix_moves

__all__ = ["UCMT", "UCMTParams", "DEFAULT_GRID", "EMA_WEIGHTS", "PREDICTION_MODES"]

#: UMIX patches per image axis when ``grid`` is not given, by spatial dims:
#: 2D: paper Sec. 4.1 r = 16 (code ``train.py``: patch = image_size // 16);
#: 3D: code ``train_3d.py`` (patch = image_size // 8 on each axis).
DEFAULT_GRID: dict[int, int] = {2: 16, 3: 8}

#: Student weights in the teacher EMA: paper eq. 6 averages the students; the
#: authors' code (``weighted_update(..., coefficient=0.99)``) weights them 0.99 / 0.01.
EMA_WEIGHTS: dict[str, tuple[float, float]] = {"paper": (0.5, 0.5), "code": (0.99, 0.01)}

#: Networks used at prediction time (see :meth:`UCMT.inference_networks`).
PREDICTION_MODES: tuple[str, ...] = ("auto", "teacher", "ensemble")


@dataclass
class UCMTParams:
    """Constants of UCMT, each with its source."""

    # UMIX: patches replaced per move (paper Sec. 4.1 k = 2; code --topk 2).
    k: int = 2
    # UMIX: patches per image axis, one number or one per axis; None: DEFAULT_GRID
    # (2D 16 = paper r; 3D 8 = 3D code). Must divide the training patch size.
    grid: int | list[int] | None = None
    # Step 2 on UMIX images (False: CMT alone, the paper's ablation "CMTv3").
    umix: bool = True
    # EMA decay of the teacher (paper eq. 6: 0.999; code: 0.99).
    ema_alpha: float = 0.999
    # Warm-up decay min(1 - 1/(t+1), ema_alpha) (code, and every EMA teacher here).
    # The paper is silent; without it the teacher stays mostly its random
    # initialisation for ~1/(1 - alpha) iterations and its pseudo labels are noise.
    ema_warmup: bool = True
    # Student weights in the EMA: "code" (0.99, 0.01; authors' weighted_update) or
    # "paper" (eq. 6: 1/2, 1/2). Default "code": the students start from different
    # random weights, and the weight-space midpoint of two independently initialised
    # networks is not a working network (tested: students at Dice 0.75 / 0.39, their
    # midpoint and the paper-form teacher at 0.0); see the module docstring.
    ema_weights: str = "code"
    # BatchNorm buffers of the teacher: "average" (EMA like the weights) or "own"
    # (code: left to the teacher's own forward passes).
    ema_buffers: str = "average"
    # lambda_m, maximum weight of L_u (code: 0.1; the paper gives no value).
    unsup_weight: float = 0.1
    # Gaussian ramp of lambda over this many epochs (code: 5, ramped per iteration);
    # None: the paper's t_m = the whole run (train.iterations).
    rampup_epochs: float | None = 5.0
    # Iterations per "epoch" for the ramp (3D code: 80 LA volumes / batch 4 = 20).
    iterations_per_epoch: int = 20
    # Paper eq. 3 (and Algorithm 1, line 9) also trains T on the labels; the code, whose
    # numbers the paper reports, trains only the students, so T stays a pure temporal
    # ensemble of them (the stable "arbitrator" of Sec. 3.3) and needs no backward.
    teacher_supervised: bool = False
    # Labeled and unlabeled images in separate forwards (each its own BatchNorm
    # batch, as the authors' train_3d.py runs them). None follows the device: separate
    # on the CPU, where a 2-volume batch's activations stay in cache (the step 1.2x
    # faster, docs/benchmarks.md), one forward of the whole batch on CUDA.
    separate_forwards: bool | None = None
    # Prediction networks: "teacher" (paper test), "ensemble" (teacher + students),
    # "auto": teacher when it has dropout (MC-dropout uncertainty), else ensemble.
    prediction: str = "auto"


def _validate(p: UCMTParams) -> None:
    if p.ema_weights not in EMA_WEIGHTS:
        raise ConfigError(f"method ucmt: ema_weights must be one of {sorted(EMA_WEIGHTS)}, got {p.ema_weights!r}")
    if p.ema_buffers not in ("average", "own"):
        raise ConfigError(f"method ucmt: ema_buffers must be 'average' or 'own', got {p.ema_buffers!r}")
    if p.prediction not in PREDICTION_MODES:
        raise ConfigError(f"method ucmt: prediction must be one of {list(PREDICTION_MODES)}, got {p.prediction!r}")
    if not 0.0 <= p.ema_alpha < 1.0:
        raise ConfigError(f"method ucmt: ema_alpha must be in [0, 1), got {p.ema_alpha}")
    if p.k < 0:
        raise ConfigError(f"method ucmt: k must be >= 0, got {p.k}")
    if p.iterations_per_epoch < 1:
        raise ConfigError(f"method ucmt: iterations_per_epoch must be >= 1, got {p.iterations_per_epoch}")
    if p.rampup_epochs is not None and p.rampup_epochs < 0:
        raise ConfigError(f"method ucmt: rampup_epochs must be >= 0 or null, got {p.rampup_epochs}")


def _dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # UCMT's L_seg: soft Dice alone, per sample and per class, background included
    # (code DSCLoss with intra_weights [1, 1]).
    return soft_dice_loss(logits, target, include_background=True, batch=False)


def separate_forwards(setting: bool | None, device: torch.device) -> bool:
    """Labeled and unlabeled images in separate forwards: ``setting``, or on every device but CUDA."""
    return device.type != "cuda" if setting is None else bool(setting)


def _forward(net: nn.Module, x: torch.Tensor, split: int | None) -> torch.Tensor:
    """``net(x)``, as two forwards ``x[:split]`` and ``x[split:]`` when both are non-empty."""
    if split is None or split <= 0 or split >= x.shape[0]:
        return net(x)
    return torch.cat([net(x[:split]), net(x[split:])])


def _argmax(logits: torch.Tensor) -> torch.Tensor:
    return class_argmax(logits.detach(), keepdim=True)


class UCMT(Method):
    """Two students and an EMA teacher, co-trained on original and UMIX images."""

    name = "ucmt"
    Params = UCMTParams

    def __init__(self, network_factory: NetworkFactory, num_classes: int, params: UCMTParams) -> None:
        super().__init__(network_factory, num_classes, params)
        _validate(params)
        # One factory call each: three different initialisations (paper Sec. 3.3).
        self.student1 = network_factory()
        self.student2 = network_factory()
        self.teacher = network_factory()
        if not params.teacher_supervised:
            init_teacher(self.teacher)

    # -- schedules ----------------------------------------------------------------
    def unsup_weight(self, step: int, max_steps: int) -> float:
        """``lambda(t) = lambda_m * exp(-5 (1 - t / t_m)^2)``, ``t_m`` per ``rampup_epochs``."""
        p = self.params
        length = max_steps if p.rampup_epochs is None else p.rampup_epochs * p.iterations_per_epoch
        return p.unsup_weight * sigmoid_rampup(step, length)

    def teacher_decay(self, step: int) -> float:
        """EMA decay used after optimizer step ``step``."""
        p = self.params
        return ema_decay(step, p.ema_alpha) if p.ema_warmup else p.ema_alpha

    def grid_for(self, spatial: tuple[int, ...]) -> int | list[int]:
        """UMIX grid for images of this spatial size (default by dimensionality)."""
        grid = self.params.grid
        return DEFAULT_GRID[len(spatial)] if grid is None else grid

    # -- training -----------------------------------------------------------------
    def _losses(
        self,
        s1: torch.Tensor,
        s2: torch.Tensor,
        y_l: torch.Tensor,
        y0_u: torch.Tensor,
        b_l: int,
        t: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``L_s`` (eq. 3), ``L_cps`` (eq. 5), ``L_mts`` (eq. 7) for one step's logits."""
        out = {"sup": _dice(s1[:b_l], y_l) + _dice(s2[:b_l], y_l)}
        if t is not None:
            out["sup"] = out["sup"] + _dice(t[:b_l], y_l)
        if s1.shape[0] > b_l:
            u1, u2 = s1[b_l:], s2[b_l:]
            out["cps"] = _dice(u1, _argmax(u2)) + _dice(u2, _argmax(u1))
            out["mts"] = _dice(u1, y0_u) + _dice(u2, y0_u)
        return out

    def mix(
        self, images: torch.Tensor, targets: torch.Tensor, u1: torch.Tensor, u2: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, UMixMoves]:
        """UMIX of images and their (pseudo) labels, with a config-level error for a bad grid."""
        spatial = tuple(images.shape[2:])
        try:
            moves = umix_moves(u1, u2, self.params.k, self.grid_for(spatial))
        except ValueError as exc:
            raise ConfigError(
                f"method ucmt: {exc} (set method.params.grid and k to fit data.patch_size {list(spatial)})"
            ) from None
        return apply_moves(images, moves), apply_moves(targets, moves), moves

    def training_step(self, labeled, unlabeled, step, max_steps) -> StepOutput:
        p = self.params
        x_l, y_l = labeled["image"], labeled["label"].long()
        x_u = unlabeled["image"] if unlabeled is not None else x_l[:0]
        b_l = x_l.shape[0]
        x = torch.cat([x_l, x_u])
        weight = self.unsup_weight(step, max_steps)

        # ---- step 1: original images --------------------------------------------
        split = b_l if separate_forwards(p.separate_forwards, x.device) else None
        s1, s2 = _forward(self.student1, x, split), _forward(self.student2, x, split)
        if p.teacher_supervised:
            t = _forward(self.teacher, x, split)
        else:
            with torch.no_grad():
                t = _forward(self.teacher, x, split)
        y0 = _argmax(t)  # teacher pseudo labels (labeled rows unused as targets)
        step1 = self._losses(s1, s2, y_l, y0[b_l:], b_l, t if p.teacher_supervised else None)
        loss = step1["sup"] + weight * (step1.get("cps", 0.0) + step1.get("mts", 0.0))
        logs: dict[str, torch.Tensor] = {k: v.detach() for k, v in step1.items()}
        logs["unsup_weight"] = torch.tensor(weight)

        if not p.umix:
            return StepOutput(loss, logs)

        # ---- uncertainty (eq. 8) from the step-1 predictions ---------------------
        with torch.no_grad():
            pt = torch.softmax(t.detach().float(), dim=1)
            u1 = predictive_entropy(0.5 * (torch.softmax(s1.detach().float(), dim=1) + pt))
            u2 = predictive_entropy(0.5 * (torch.softmax(s2.detach().float(), dim=1) + pt))
            # One UMIX call for the whole batch: labeled rows carry Y, unlabeled rows Y0.
            x_mix, y_mix, _ = self.mix(x, torch.cat([y_l, y0[b_l:]]), u1, u2)
        logs["uncertainty"] = torch.stack([u1.mean(), u2.mean()]).mean()

        # ---- step 2: UMIX images ---------------------------------------------------
        s1m, s2m = _forward(self.student1, x_mix, split), _forward(self.student2, x_mix, split)
        tm = self.teacher(x_mix[:b_l]) if p.teacher_supervised else None
        step2 = self._losses(s1m, s2m, y_mix[:b_l], y_mix[b_l:], b_l, tm)
        loss = loss + step2["sup"] + weight * (step2.get("cps", 0.0) + step2.get("mts", 0.0))
        logs.update({f"{k}_mix": v.detach() for k, v in step2.items()})
        return StepOutput(loss, logs)

    def after_optimizer_step(self, step: int) -> None:
        """Teacher EMA of the students' weighted average (eq. 6)."""
        p = self.params
        update_ema(
            self.teacher,
            [self.student1, self.student2],
            self.teacher_decay(step),
            weights=EMA_WEIGHTS[p.ema_weights],
            buffers=p.ema_buffers,
        )

    # -- inference ----------------------------------------------------------------
    def _prediction_mode(self) -> str:
        mode = self.params.prediction
        if mode == "auto":
            return "teacher" if has_dropout(self.teacher) else "ensemble"
        return mode

    def inference_networks(self) -> list[nn.Module]:
        """The teacher (paper: only T at test time), or T, S1 and S2.

        ``"auto"`` picks the teacher alone when it has dropout, so MC dropout gives
        its epistemic uncertainty, and the three networks otherwise, so that the
        uncertainty maps reflect their disagreement instead of a single softmax's
        confidence (at the cost of the label map being their average).
        """
        if self._prediction_mode() == "teacher":
            return [self.teacher]
        return [self.teacher, self.student1, self.student2]

    def uncertainty_description(self) -> str:
        mode, dropout = self._prediction_mode(), has_dropout(self.teacher)
        if mode == "teacher" and dropout:
            return (
                "predictive entropy (nats, at most ln C) of the UCMT teacher's mean softmax over MC-dropout "
                "samples (inference.mc_samples); the mutual-information map is its epistemic part"
            )
        if mode == "teacher":
            return (
                "entropy (nats, at most ln C) of the UCMT teacher's single softmax: its confidence only; the "
                "network has no dropout, so the mutual-information map is zero (method.params.prediction "
                "'ensemble' gives the teacher-student disagreement)"
            )
        samples = ", each averaged over MC-dropout samples" if dropout else ""
        return (
            "predictive entropy (nats, at most ln C) of the equal-weight mean softmax of the UCMT teacher and "
            f"its two students{samples}; the mutual-information map is their disagreement (epistemic part). "
            "The label map is the same three-network average, not the teacher alone as in the paper "
            "(method.params.prediction 'teacher' for that)"
        )
