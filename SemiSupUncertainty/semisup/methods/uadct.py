"""UA-DCT: uncertainty-aware deep co-training (000_7487838165f3d9e5).

UA-DCT adds MC-dropout uncertainty weights to deep co-training for segmentation
(DCT-seg, Peng et al. 2020, code ``jizongFox/Deep-Co-Training-for-Semi-Supervised-Image-Segmentation``).
Two networks of the same architecture, initialised differently, are trained with
(paper eq. 2)::

    L = L_sup + lambda_cot(t) * L_agr + lambda_adv(t) * L_div

- ``L_sup`` (eq. 3): each network sees only its own half of the labeled cases; its
  per-voxel cross-entropy is weighted by its own MC-dropout predictive entropy (eq. 1).
- ``L_agr`` (eqs. 4-5): Jensen-Shannon divergence between the two networks on
  unlabeled images, per voxel, weighted by an uncertainty weight that is larger where
  the two networks are more certain (see :func:`agreement_weight` for the sign).
- ``L_div`` (eq. 6): adversarial examples of one network, fed to the other, with a KL
  to the generating network's clean prediction: FGSM on labeled images or VAT on
  unlabeled images, one of the two drawn at random each step (DCT-seg code).

At test time the two networks are soft-voted (:meth:`UADCT.inference_networks`); the
paper reports both that vote ("vot") and the mean of the single-network scores
("avg"), which :meth:`UADCT.per_model_networks` makes possible.
"""

from __future__ import annotations

import hashlib
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ConfigError
from ..inference.uncertainty import ENTROPY_EPS, predictive_entropy
from ..networks.base import mc_dropout, repeat_samples
from .base import Method, NetworkFactory, StepOutput
from .losses import soft_dice_loss
from .ramps import consistency_weight
from .volume_apply import apply_to_image

__all__ = [
    "UADCT",
    "UADCTParams",
    "js_divergence",
    "agreement_weight",
    "supervised_weight",
    "weighted_cross_entropy",
    "kl_to_target",
    "labeled_half",
    "split_labeled",
    "fgsm_perturbation",
    "vat_perturbation",
    "mc_entropy",
    "preserve_buffers",
]

SUP_WEIGHTS = ("entropy", "one_plus")
SUP_LOSSES = ("ce", "ce_dice")
AGREEMENT_BEFORE = ("plain", "off")


@dataclass
class UADCTParams:
    """Constants of UA-DCT, each with its source.

    "Epochs" are ``iterations_per_epoch`` iterations, as in UA-MT's code, because the
    engine counts iterations, not passes over the data.
    """

    # T MC-dropout passes per uncertainty map (eq. 1). The paper does not give T;
    # UA-MT's T = 8 for the same estimator.
    mc_samples: int = 8
    # Supervised weight w(U) of the per-voxel CE. "entropy": w = U, the paper's eq. 3
    # ("multiplies the uncertainty U_sup as a weight coefficient"; Sec. 3.2.2: models
    # "pay more attention to the pixels with higher uncertainty"). "one_plus":
    # w = 1 + U / ln C (ours: keeps plain CE on confident voxels, up to x2 on uncertain).
    sup_weight: str = "entropy"
    # Supervised loss. "ce": the weighted CE alone (paper eq. 3, DCT code). "ce_dice":
    # 0.5 (weighted CE + soft Dice), the project's supervised convention (UA-MT code);
    # ours, for small foreground (CE alone learns slowly when it is a few % of voxels).
    sup_loss: str = "ce"
    # Iteration from which the supervised CE is uncertainty weighted; plain CE before.
    # Paper Sec. 3.2.3: from epoch 0.
    sup_uncertainty_start: int = 0
    # beta and C of U_un (eq. 4: beta = 0.7, C = 2); see agreement_weight for the sign.
    unsup_beta: float = 0.7
    unsup_c: float = 2.0
    # Iteration from which the agreement is uncertainty weighted. None: 20 epochs
    # (paper Sec. 3.2.3: "epoch 20 for the unsupervised stage").
    unsup_uncertainty_start: int | None = None
    # Agreement before that iteration. "plain": DCT-seg's unweighted JS (the paper
    # introduces uncertainty into DCT's loss at epoch 20; Fig. 3 varies that epoch);
    # "off": no agreement term before it.
    agreement_before_start: str = "plain"
    # Maximum weights of the Gaussian ramps (DCT-seg config/ACDC_config_cotrain.yaml:
    # lambda_cot_max 1, lambda_adv_max 0.005, ramp_up_mult -5; paper Sec. 4.2 follows [13]).
    lambda_cot: float = 1.0
    lambda_adv: float = 0.005
    # Ramp length in epochs. DCT-seg ACDC: epoch_max_ramp 100 of 120 epochs; here
    # UA-MT's 40 epochs of 150 iterations, full weight at 6000 (the project's default budget).
    rampup_epochs: float = 40.0
    iterations_per_epoch: int = 150
    # FGSM step (L_inf) on labeled images, in network-input units (paper Sec. 4.2: 0.03;
    # DCT-seg cotraining.py: 0.05). DCT-seg's images are in [0, 1]; MR input here is z-scored.
    fgsm_eps: float = 0.03
    # VAT radius (L2 per sample), finite-difference step and power iterations (paper
    # Sec. 4.2: eps 10; DCT-seg VATGenerator defaults: eps 10, xi 1e-6, ip 1; its
    # cotraining.py passes eps 0.05). With xi = 1e-6 the float32 finite difference is
    # mostly rounding (docs/methods.md, UA-DCT); vat_xi 1e-2 finds VAT's direction.
    vat_eps: float = 10.0
    vat_xi: float = 1e-6
    vat_iterations: int = 1
    # Probability of the FGSM-on-labeled branch (else VAT-on-unlabeled) per step
    # (DCT-seg cotraining.py: ``random() > 0.5``); drawn from torch's seeded RNG.
    fgsm_probability: float = 0.5
    # Prefix of the hashed case name deciding each labeled case's network; change it
    # to draw another split (see split_labeled).
    split_salt: str = ""

    def __post_init__(self) -> None:
        if self.sup_weight not in SUP_WEIGHTS:
            raise ConfigError(f"uadct: sup_weight must be one of {SUP_WEIGHTS}, got {self.sup_weight!r}")
        if self.sup_loss not in SUP_LOSSES:
            raise ConfigError(f"uadct: sup_loss must be one of {SUP_LOSSES}, got {self.sup_loss!r}")
        if self.agreement_before_start not in AGREEMENT_BEFORE:
            raise ConfigError(
                f"uadct: agreement_before_start must be one of {AGREEMENT_BEFORE}, got {self.agreement_before_start!r}"
            )
        if self.mc_samples < 1 or self.vat_iterations < 1 or self.iterations_per_epoch < 1:
            raise ConfigError("uadct: mc_samples, vat_iterations and iterations_per_epoch must be >= 1")
        if not 0.0 <= self.fgsm_probability <= 1.0:
            raise ConfigError(f"uadct: fgsm_probability must be in [0, 1], got {self.fgsm_probability}")
        if min(self.fgsm_eps, self.vat_eps, self.vat_xi, self.lambda_cot, self.lambda_adv, self.unsup_beta) < 0:
            raise ConfigError("uadct: eps, xi, lambda and beta values must be >= 0")

    def uncertainty_start_iteration(self) -> int:
        """``unsup_uncertainty_start``, or 20 epochs when it is ``None``."""
        if self.unsup_uncertainty_start is not None:
            return int(self.unsup_uncertainty_start)
        return 20 * self.iterations_per_epoch


# --------------------------------------------------------------------------------------
# Formulas
# --------------------------------------------------------------------------------------


def js_divergence(p: torch.Tensor, q: torch.Tensor, eps: float = ENTROPY_EPS) -> torch.Tensor:
    """Jensen-Shannon divergence ``H((p + q) / 2) - (H(p) + H(q)) / 2`` per voxel (nats).

    Paper eq. 5 (DCT-seg ``JSD_2D``: entropy of the mean minus mean of the entropies).

    Parameters
    ----------
    p, q:
        ``(B, C, *spatial)`` probabilities.
    eps:
        Added inside the logarithms (:data:`~semisup.inference.uncertainty.ENTROPY_EPS`);
        the same ``eps`` everywhere keeps the entropy concave, so the result is >= 0
        up to rounding. Not clamped, so gradients pass everywhere.

    Returns
    -------
    torch.Tensor
        ``(B, 1, *spatial)``, in ``[0, ln 2]``.
    """
    p, q = p.float(), q.float()
    mean_entropy = 0.5 * (predictive_entropy(p, eps) + predictive_entropy(q, eps))
    return predictive_entropy(0.5 * (p + q), eps) - mean_entropy


def agreement_weight(u1: torch.Tensor, u2: torch.Tensor, beta: float, c: float) -> torch.Tensor:
    """Per-voxel weight of the agreement term: ``max(beta * (c - (u1 + u2) / 2), 0)``.

    The paper's eq. 4 reads ``U_un = -beta * [0.5 (U1 + U2) + C]``. With entropies
    ``U >= 0`` and ``beta, C > 0`` that is always negative (-1.4 to -2.37 for four
    classes), so minimising ``U_un * JS`` would *maximise* disagreement, and its size
    grows with uncertainty, against the paper's own text ("models should learn more
    from lower uncertainty pixels"). Flipping the sign of ``C`` inside the bracket,
    ``-beta * (mean U - C) = beta * (C - mean U)``, keeps both constants and gives what
    the text describes: ``beta * C = 1.4`` where both networks are certain, falling
    linearly with uncertainty (binary: 0.91 at ``ln 2``; four classes: 0.43 at
    ``ln 4``). The clamp at 0 matters only beyond ``e^2 ~ 7`` classes.

    Parameters
    ----------
    u1, u2:
        MC-dropout predictive entropies of the two networks (nats), same shape.
    beta, c:
        Paper eq. 4 constants (0.7, 2).
    """
    return (beta * (c - 0.5 * (u1 + u2))).clamp_min(0.0)


def supervised_weight(u: torch.Tensor, mode: str, num_classes: int) -> torch.Tensor:
    """Per-voxel weight of the supervised CE from the network's own entropy ``u``.

    ``"entropy"``: ``w = u`` (paper eq. 3: larger where the network is less sure);
    ``"one_plus"``: ``w = 1 + u / ln C`` (in ``[1, 2]``; never switches CE off).
    """
    if mode == "entropy":
        return u
    if mode == "one_plus":
        return 1.0 + u / math.log(max(num_classes, 2))
    raise ValueError(f"sup_weight must be one of {SUP_WEIGHTS}, got {mode!r}")


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean over voxels of ``weight * CE(logits, target)``; plain CE mean without weight.

    ``target`` is ``(B, 1, *spatial)`` int; ``weight`` ``(B, 1, *spatial)`` (no gradient).
    """
    ce = F.cross_entropy(logits.float(), target[:, 0].long(), reduction="none")
    if weight is None:
        return ce.mean()
    return (weight[:, 0].detach().float() * ce).mean()


def kl_to_target(target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(target) || softmax(logits))``, summed over classes, mean over voxels.

    The target is detached: the generating network's clean prediction acts as a
    teacher for the other network's prediction on the adversarial input (same gradient
    as DCT's cross-entropy ``H(p1(x), p2(g1(x)))`` for the receiving network; the
    generating network is not pulled towards the adversarial prediction).
    """
    log_t = torch.log_softmax(target_logits.detach().float(), dim=1)
    log_p = torch.log_softmax(logits.float(), dim=1)
    return (log_t.exp() * (log_t - log_p)).sum(dim=1).mean()


def labeled_half(name: str, salt: str = "") -> int:
    """0 (network 1) or 1 (network 2) for a labeled case, from a hash of its name.

    SHA-256 of ``salt + name``, lowest bit of the first byte: the same in every
    process and run (Python's ``hash`` is salted per process), so a resumed run, the
    2D slices of one volume and every patch of a case all go to the same network.
    """
    return hashlib.sha256((salt + str(name)).encode("utf-8")).digest()[0] & 1


def split_labeled(names: Sequence[str], salt: str = "") -> tuple[list[int], list[int]]:
    """Batch indices of the items of network 1 and of network 2 (disjoint, covering).

    The split is by case, not balanced: with few labeled cases one half can hold far
    more cases than the other (3 cases: all in one half with probability 1/4). Check
    it with ``[labeled_half(n, salt) for n in names]`` and change ``split_salt`` to
    draw another.
    """
    halves: tuple[list[int], list[int]] = ([], [])
    for i, name in enumerate(names):
        halves[labeled_half(name, salt)].append(i)
    return halves


@contextmanager
def preserve_buffers(net: nn.Module) -> Iterator[nn.Module]:
    """Restore every buffer (BatchNorm running statistics) on exit.

    The forward still uses the batch statistics of train mode; only the running
    averages, which eval-mode prediction uses, are kept free of adversarial inputs.
    The forward updates throw-away clones and the original tensors are put back
    untouched: copying the old values back in place would bump the version of tensors
    that the step's earlier forward saved for backward, and backward would fail.
    """
    originals: list[tuple[nn.Module, str, torch.Tensor]] = []
    for module in net.modules():
        for name, buf in module._buffers.items():
            if buf is not None:
                originals.append((module, name, buf))
                module._buffers[name] = buf.clone()
    try:
        yield net
    finally:
        for module, name, buf in originals:
            module._buffers[name] = buf


@contextmanager
def _deterministic_fp32(net: nn.Module, device_type: str) -> Iterator[nn.Module]:
    """Eval mode (BatchNorm on running statistics, dropout off) and no autocast.

    Eval mode as in DCT-seg's generators: the attack needs a deterministic network (VAT
    is a finite difference) and must not move the running statistics. Float32 because
    VAT's ``xi = 1e-6`` step vanishes in half precision.
    """
    was_training = net.training
    net.eval()
    try:
        with torch.autocast(device_type=device_type, enabled=False):
            yield net
    finally:
        net.train(was_training)


def _unit_l2(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample unit-L2 direction of ``d`` (float32) and which samples were non-zero.

    Dividing by the max first makes tiny gradients (VAT's are ~xi) safe from underflow.
    """
    flat = d.float().flatten(1)
    scale = flat.abs().amax(dim=1, keepdim=True)
    ok = scale[:, 0] > 0
    flat = flat / scale.clamp_min(torch.finfo(torch.float32).tiny)
    flat = flat / flat.norm(dim=1, keepdim=True).clamp_min(1.0)  # norm >= 1 where ok, 0 elsewhere
    return flat.view_as(d), ok


def fgsm_perturbation(net: nn.Module, x: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
    """FGSM: ``eps * sign(grad_x CE(net(x), target))`` (Goodfellow et al.; DCT-seg ``FSGMGenerator``).

    Computed in eval mode and float32 (see :func:`_deterministic_fp32`); only the input
    gradient is taken, so parameter gradients are untouched. The result has
    ``L_inf = eps`` wherever the gradient is not exactly zero. No clamping of
    ``x + r`` (DCT-seg clamps to its [0, 1] images; inputs here are normalised).

    Parameters
    ----------
    net:
        The generating network.
    x:
        ``(B, 1, *spatial)`` labeled images.
    target:
        ``(B, 1, *spatial)`` labels (DCT-seg attacks the ground truth).
    eps:
        Step size.

    Returns
    -------
    torch.Tensor
        Perturbation ``r`` (float32, shape of ``x``), detached.
    """
    with _deterministic_fp32(net, x.device.type):
        x_in = x.detach().float().requires_grad_(True)
        loss = F.cross_entropy(net(x_in).float(), target[:, 0].long(), reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_in)
    return (eps * grad.float().sign()).detach()


def vat_perturbation(net: nn.Module, x: torch.Tensor, eps: float, xi: float = 1e-6, iterations: int = 1) -> torch.Tensor:
    """VAT: ``r = eps * d / ||d||_2`` per sample, ``d`` from power iteration (Miyato et al.).

    ``d`` starts as Gaussian noise; each iteration takes the gradient of
    ``KL(p(x) || p(x + xi * d))`` with respect to the perturbation (DCT-seg
    ``VATGenerator``). Eval mode and float32 (see :func:`_deterministic_fp32`). A
    sample whose gradient is exactly zero keeps its previous direction, so every
    sample's perturbation has L2 norm ``eps``.

    Returns
    -------
    torch.Tensor
        Perturbation (float32, shape of ``x``), detached.
    """
    with _deterministic_fp32(net, x.device.type):
        x32 = x.detach().float()
        with torch.no_grad():
            log_p = torch.log_softmax(net(x32).float(), dim=1)
        d, _ = _unit_l2(torch.randn_like(x32))
        for _ in range(int(iterations)):
            r = (xi * d).requires_grad_(True)
            log_q = torch.log_softmax(net(x32 + r).float(), dim=1)
            # Sum, not mean: only the direction matters and a sum keeps the gradient large.
            kl = (log_p.exp() * (log_p - log_q)).sum()
            (grad,) = torch.autograd.grad(kl, r)
            new_d, ok = _unit_l2(grad)
            keep = ok.view(-1, *([1] * (x.ndim - 1)))
            d = torch.where(keep, new_d, d)
    return (eps * d).detach()


@torch.no_grad()
def mc_entropy(net: nn.Module, x: torch.Tensor, samples: int) -> torch.Tensor:
    """Predictive entropy (eq. 1) of ``samples`` MC-dropout passes, batched, no gradient.

    Runs in :func:`~semisup.networks.base.mc_dropout` mode (BatchNorm on running
    statistics, dropout on), so it leaves the running statistics alone.

    Returns
    -------
    torch.Tensor
        ``(B, 1, *spatial)`` entropy in nats.
    """
    with mc_dropout(net):
        if hasattr(net, "mc_forward"):
            logits = net.mc_forward(x, samples)
        else:
            y = net(repeat_samples(x, samples))
            logits = y.reshape(samples, x.shape[0], *y.shape[1:])
    return predictive_entropy(torch.softmax(logits.float(), dim=2).mean(dim=0))


# --------------------------------------------------------------------------------------
# Method
# --------------------------------------------------------------------------------------


class UADCT(Method):
    """Two co-trained networks with uncertainty-weighted supervision and agreement.

    Labeled split
        The engine draws ``train.labeled_batch`` labeled items from all labeled cases.
        Each item goes to the network of its case (:func:`labeled_half` of
        ``labeled["name"]``), so network 1 is supervised only by its half of the cases
        and network 2 only by the other half (paper Sec. 3.2.1, ``D_l1``/``D_l2``). A
        network with no item of its half in a batch has a zero supervised term that step.

    BatchNorm
        MC-dropout passes and the attack generation run in eval mode (running
        statistics, nothing updated); the receiving network's forward on adversarial
        images runs in train mode inside :func:`preserve_buffers`, so adversarial
        inputs never enter the running statistics used at prediction.

    Attributes
    ----------
    net1, net2:
        The two networks, each from its own ``network_factory()`` call.
    """

    name = "uadct"
    Params = UADCTParams

    def __init__(self, network_factory: NetworkFactory, num_classes: int, params: UADCTParams) -> None:
        super().__init__(network_factory, num_classes, params)
        self.net1 = network_factory()
        self.net2 = network_factory()

    @property
    def nets(self) -> tuple[nn.Module, nn.Module]:
        return self.net1, self.net2

    # -- training -----------------------------------------------------------------
    def training_step(self, labeled, unlabeled, step, max_steps) -> StepOutput:
        p: UADCTParams = self.params
        x_l, y_l = labeled["image"], labeled["label"]
        if "name" not in labeled:
            raise ValueError("uadct needs the case names of the labeled batch (labeled['name']) to split it")
        halves = split_labeled(list(labeled["name"]), p.split_salt)
        x_u = unlabeled["image"] if unlabeled is not None else x_l[:0]
        b_u = x_u.shape[0]
        zero = x_l.new_zeros((), dtype=torch.float32)
        logs: dict[str, torch.Tensor] = {}

        # One forward per network over its labeled half and the unlabeled batch.
        idx = [torch.as_tensor(h, dtype=torch.long, device=x_l.device) for h in halves]
        logits_l: list[torch.Tensor | None] = [None, None]
        logits_u: list[torch.Tensor | None] = [None, None]
        sup = zero
        for i, net in enumerate(self.nets):
            x_li = x_l[idx[i]]
            n_i = x_li.shape[0]
            if n_i + b_u == 0:
                logs[f"sup{i + 1}"] = zero
                continue
            out = net(torch.cat([x_li, x_u]))
            logits_l[i], logits_u[i] = out[:n_i], out[n_i:]
            sup_i = zero
            if n_i:
                weight = None
                if step >= p.sup_uncertainty_start:
                    weight = supervised_weight(mc_entropy(net, x_li, p.mc_samples), p.sup_weight, self.num_classes)
                sup_i = weighted_cross_entropy(logits_l[i], y_l[idx[i]], weight)
                if p.sup_loss == "ce_dice":
                    sup_i = 0.5 * (sup_i + soft_dice_loss(logits_l[i], y_l[idx[i]]))
            logs[f"sup{i + 1}"] = sup_i.detach()
            sup = sup + sup_i
        loss = sup

        # Agreement (JS) on the unlabeled images.
        lam_cot = consistency_weight(step, p.lambda_cot, p.rampup_epochs, p.iterations_per_epoch)
        weighted = step >= p.uncertainty_start_iteration()
        if b_u and lam_cot > 0 and (weighted or p.agreement_before_start == "plain"):
            js = js_divergence(torch.softmax(logits_u[0].float(), 1), torch.softmax(logits_u[1].float(), 1))
            if weighted:
                w = agreement_weight(
                    mc_entropy(self.net1, x_u, p.mc_samples), mc_entropy(self.net2, x_u, p.mc_samples), p.unsup_beta, p.unsup_c
                )
                logs["agreement_weight"] = w.mean().detach()
                agr = (w * js).mean()
            else:
                agr = js.mean()
            logs["agreement"] = agr.detach()
            logs["lambda_cot"] = torch.tensor(lam_cot)
            loss = loss + lam_cot * agr

        # Diversity: adversarial examples of one network taught by the other.
        lam_adv = consistency_weight(step, p.lambda_adv, p.rampup_epochs, p.iterations_per_epoch)
        if lam_adv > 0:
            div, used_fgsm = self._diversity(x_l, y_l, idx, logits_l, x_u, logits_u)
            if div is not None:
                logs["diversity"] = div.detach()
                logs["diversity_fgsm"] = torch.tensor(float(used_fgsm))
                logs["lambda_adv"] = torch.tensor(lam_adv)
                loss = loss + lam_adv * div
        return StepOutput(loss, logs)

    def _diversity(self, x_l, y_l, idx, logits_l, x_u, logits_u) -> tuple[torch.Tensor | None, bool]:
        """Eq. 6 with DCT-seg's sampling: FGSM on labeled or VAT on unlabeled images.

        FGSM of network g attacks g's own labeled half against the ground truth; when
        one half is absent from the batch only the other direction counts. The branch
        drawn falls back to the other one when it has no images this step.
        """
        p: UADCTParams = self.params
        # Always draw, so the RNG stream does not depend on which images are present.
        use_fgsm = bool(torch.rand(()) < p.fgsm_probability)
        fgsm_ok = any(i.numel() for i in idx)
        vat_ok = x_u.shape[0] > 0 and logits_u[0] is not None and logits_u[1] is not None
        if not (fgsm_ok if use_fgsm else vat_ok):
            use_fgsm = not use_fgsm
        terms = []
        for g, r in ((0, 1), (1, 0)):
            gen, rec = self.nets[g], self.nets[r]
            if use_fgsm:
                if idx[g].numel() == 0:
                    continue
                x, target = x_l[idx[g]], logits_l[g]
                delta = fgsm_perturbation(gen, x, y_l[idx[g]], p.fgsm_eps)
            else:
                x, target = x_u, logits_u[g]
                delta = vat_perturbation(gen, x, p.vat_eps, p.vat_xi, p.vat_iterations)
            with preserve_buffers(rec):
                adv_logits = rec(x + delta.to(x.dtype))
            terms.append(kl_to_target(target, adv_logits))
        if not terms:
            return None, use_fgsm
        return torch.stack(terms).mean(), use_fgsm

    # -- inference ----------------------------------------------------------------
    def inference_networks(self) -> list[nn.Module]:
        # Soft voting of both networks ("vot" in the paper's tables).
        return [self.net1, self.net2]

    def per_model_networks(self) -> dict[str, nn.Module]:
        """Each network alone, by name (``"model1"``, ``"model2"``).

        Pass ``[net]`` to :func:`semisup.engine.predict.predict_array` to get one network's
        prediction (the paper's "avg" rows average the two networks' scores).
        """
        return {"model1": self.net1, "model2": self.net2}

    #: written at prediction as ``<case>_disagreement.nrrd`` (predict.py)
    own_uncertainty_name = "disagreement"

    @torch.no_grad()
    def own_uncertainty_map(self, image: torch.Tensor) -> torch.Tensor:
        """UA-DCT's own uncertainty on a whole preprocessed image: :meth:`disagreement`.

        ``image`` is ``(1, 1, *spatial)`` of any size (zero-padded to the backbone's
        divisor and cropped back); a 2D network runs a 3D volume slice by slice along z.
        One whole-image forward per network, no sliding window.
        """
        net = self.net1
        return apply_to_image(self.disagreement, image, net.spatial_dims, getattr(net, "divisor", 16))

    @torch.no_grad()
    def disagreement(self, x: torch.Tensor) -> torch.Tensor:
        """JS divergence between the two networks' eval-mode softmax on ``x`` (nats).

        UA-DCT's own uncertainty: the quantity its agreement term minimises. ``(B, 1,
        *spatial)``, in ``[0, ln 2]``; ``ln 2`` where the two networks are certain of
        different classes.
        """
        was = [n.training for n in self.nets]
        try:
            for n in self.nets:
                n.eval()
            p1 = torch.softmax(self.net1(x).float(), dim=1)
            p2 = torch.softmax(self.net2(x).float(), dim=1)
        finally:
            for n, w in zip(self.nets, was):
                n.train(w)
        return js_divergence(p1, p2).clamp_min(0.0)

    def uncertainty_description(self) -> str:
        return (
            "UA-DCT soft-votes two networks trained on different halves of the labeled cases. 'uncertainty' is "
            "the predictive entropy (nats) of the vote: the mean softmax over both networks and their MC-dropout "
            "samples. 'disagreement' is UA-DCT's own map: the Jensen-Shannon divergence between the two networks "
            "(dropout off), 0 to ln 2 nats, the quantity its agreement loss minimises; 'mutual information' equals it "
            "with mc_samples = 1 and adds each network's MC-dropout spread with more. High disagreement: the two "
            "halves of the labeled cases taught different answers there; review those voxels first. Low values do "
            "not prove correctness: both networks can be wrong together, especially on unusual images."
        )
