"""UA-DCT and CPS: hand-computed formulas, attack norms, the labeled split, and one real run each."""

from __future__ import annotations

import copy
import hashlib
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from semisup.config import ConfigError, DataConfig, InferenceConfig, MethodConfig, NetworkConfig, RunConfig, TrainConfig
from semisup.methods import build_method, method_names
from semisup.methods.base import build_params
from semisup.methods.cps import cps_loss
from semisup.methods.uadct import (
    UADCTParams,
    agreement_weight,
    fgsm_perturbation,
    js_divergence,
    kl_to_target,
    labeled_half,
    mc_entropy,
    preserve_buffers,
    split_labeled,
    supervised_weight,
    vat_perturbation,
    weighted_cross_entropy,
)
from semisup.networks.unet2d import UNet2D

REPO = Path(__file__).resolve().parents[2]
LN2 = math.log(2.0)


def _tiny_unet(seed: int = 0) -> UNet2D:
    torch.manual_seed(seed)
    net = UNet2D(in_channels=1, num_classes=2, base_filters=4, dropout=True)
    net.train()
    with torch.no_grad():  # non-trivial running statistics
        for _ in range(2):
            net(torch.randn(4, 1, 32, 32))
    return net


def _buffers(net: nn.Module) -> list[torch.Tensor]:
    return [b.detach().clone() for b in net.buffers()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


# ------------------------------------------------------------------------- formulas


def _probs(*rows: list[float]) -> torch.Tensor:
    """(1, C, V) probabilities from one row per voxel."""
    return torch.tensor(rows, dtype=torch.float32).T[None]


def test_js_divergence_hand_values():
    # voxel 0: p = (0.5, 0.5), q = (0.9, 0.1); m = (0.7, 0.3)
    #   H(m) = -(0.7 ln 0.7 + 0.3 ln 0.3) = 0.610864; H(p) = ln 2 = 0.693147
    #   H(q) = -(0.9 ln 0.9 + 0.1 ln 0.1) = 0.325083; JS = 0.610864 - (0.693147 + 0.325083) / 2 = 0.101749
    # voxel 1: certain of different classes -> JS = ln 2; voxel 2: identical -> 0
    p = _probs([0.5, 0.5], [1.0, 0.0], [0.2, 0.8])
    q = _probs([0.9, 0.1], [0.0, 1.0], [0.2, 0.8])
    js = js_divergence(p, q)
    assert js.shape == (1, 1, 3)
    assert js[0, 0].tolist() == pytest.approx([0.101749, LN2, 0.0], abs=1e-5)
    assert torch.allclose(js, js_divergence(q, p))  # symmetric


def test_agreement_weight_two_voxels_is_positive_and_larger_where_certain():
    # u1 = (0, ln 2), u2 = (0, 0): mean U = (0, 0.346574)
    # w = 0.7 * (2 - mean U) = (1.4, 0.7 * 1.653426 = 1.157398)
    u1 = torch.tensor([0.0, LN2])
    u2 = torch.tensor([0.0, 0.0])
    w = agreement_weight(u1, u2, beta=0.7, c=2.0)
    assert w.tolist() == pytest.approx([1.4, 1.157398], abs=1e-6)
    assert (w > 0).all() and w[0] > w[1]
    # The paper's eq. 4 as printed, -beta (mean U + C), is negative everywhere: rejected.
    assert (-0.7 * (0.5 * (u1 + u2) + 2.0) < 0).all()
    # Only beyond mean U = C (more than e^2 classes) does the clamp act.
    assert agreement_weight(torch.tensor([3.0]), torch.tensor([3.0]), 0.7, 2.0).item() == 0.0


def test_supervised_weight_and_weighted_ce():
    u = torch.tensor([[[0.0, LN2]]])
    assert torch.equal(supervised_weight(u, "entropy", 2), u)  # paper eq. 3: w = U
    # one_plus with 4 classes: 1 + ln 2 / ln 4 = 1.5
    assert supervised_weight(u, "one_plus", 4)[0, 0].tolist() == pytest.approx([1.0, 1.5])
    # Two voxels with logits (0, 0): CE = ln 2 each; weights (2, 0) -> mean (2 ln 2 + 0) / 2 = ln 2
    logits = torch.zeros(1, 2, 2)
    target = torch.zeros(1, 1, 2, dtype=torch.long)
    assert weighted_cross_entropy(logits, target, torch.tensor([[[2.0, 0.0]]])).item() == pytest.approx(LN2)
    assert weighted_cross_entropy(logits, target, None).item() == pytest.approx(LN2)


def test_kl_to_target_hand_value_and_no_gradient_to_target():
    # target softmax (0.5, 0.5), prediction logits (ln 3, 0) -> softmax (0.75, 0.25)
    # KL = 0.5 ln(0.5 / 0.75) + 0.5 ln(0.5 / 0.25) = 0.5 (ln 2 - ln 1.5) = 0.143841
    target = torch.zeros(1, 2, 1, requires_grad=True)
    pred = torch.tensor([[[math.log(3.0)], [0.0]]], requires_grad=True)
    kl = kl_to_target(target, pred)
    assert kl.item() == pytest.approx(0.143841, abs=1e-6)
    kl.backward()
    assert target.grad is None and pred.grad is not None


def test_mc_entropy_of_a_deterministic_net_is_its_entropy():
    net = nn.Conv2d(1, 2, 1)
    nn.init.zeros_(net.weight)
    nn.init.zeros_(net.bias)  # logits (0, 0) -> entropy ln 2 everywhere
    u = mc_entropy(net, torch.randn(2, 1, 4, 4), samples=3)
    assert u.shape == (2, 1, 4, 4)
    assert torch.allclose(u, torch.full_like(u, LN2), atol=1e-5)


def test_cps_loss_hand_case():
    # one voxel: a = (2, 0) predicts 0, b = (0, 1) predicts 1
    # CE(a, 1) = ln(1 + e^2) = 2.126928; CE(b, 0) = ln(1 + e) = 1.313262; sum 3.440190
    a = torch.tensor([2.0, 0.0]).view(1, 2, 1, 1).requires_grad_(True)
    b = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1).requires_grad_(True)
    loss = cps_loss(a, b)
    assert loss.item() == pytest.approx(3.440190, abs=1e-5)
    loss.backward()
    # Pseudo labels carry no gradient: d/da = softmax(a) - onehot(argmax b) only.
    sa = torch.softmax(torch.tensor([2.0, 0.0]), 0)
    assert a.grad.flatten().tolist() == pytest.approx((sa - torch.tensor([0.0, 1.0])).tolist(), abs=1e-6)
    assert cps_loss(a[:0], b[:0]).item() == 0.0


# -------------------------------------------------------------------------- attacks


def test_fgsm_linf_is_eps_and_leaves_network_untouched():
    net = _tiny_unet()
    x = torch.randn(2, 1, 32, 32)
    y = (torch.rand(2, 1, 32, 32) > 0.5).long()
    before = _buffers(net)
    r = fgsm_perturbation(net, x, y, eps=0.03)
    assert r.dtype == torch.float32 and r.shape == x.shape
    eps32 = torch.tensor(0.03).item()  # 0.03 as float32
    assert r.abs().max().item() == eps32  # exactly eps
    assert set(torch.unique(r).tolist()) <= {-eps32, 0.0, eps32}
    assert (r != 0).float().mean() > 0.9  # a sign almost everywhere
    assert _same(before, _buffers(net)) and net.training  # eval only during the attack
    assert all(p.grad is None for p in net.parameters())


def test_vat_l2_norm_is_eps_per_sample_and_leaves_network_untouched():
    net = _tiny_unet()
    x = torch.randn(3, 1, 32, 32)
    before = _buffers(net)
    r = vat_perturbation(net, x, eps=10.0, xi=1e-6, iterations=1)
    norms = r.flatten(1).norm(dim=1)
    assert norms.tolist() == pytest.approx([10.0] * 3, rel=1e-5)
    assert _same(before, _buffers(net)) and net.training
    assert all(p.grad is None for p in net.parameters())


def test_vat_power_iteration_matches_float64_reference():
    # The direction is H d / |H d| for the KL Hessian H at x; compare with an exact-ish
    # float64 computation from the same starting noise. (xi = 1e-2: with the code's
    # 1e-6 a float32 finite difference is dominated by rounding, see docs/methods.md.)
    net = _tiny_unet()
    x = torch.randn(2, 1, 32, 32)
    torch.manual_seed(1)
    r = vat_perturbation(net, x, eps=1.0, xi=1e-2)

    net64 = copy.deepcopy(net).double().eval()
    x64 = x.double()
    torch.manual_seed(1)
    d = torch.randn(x.shape).double()
    d = d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    with torch.no_grad():
        log_p = torch.log_softmax(net64(x64), 1)
    rr = (1e-6 * d).requires_grad_(True)
    log_q = torch.log_softmax(net64(x64 + rr), 1)
    (g,) = torch.autograd.grad((log_p.exp() * (log_p - log_q)).sum(), rr)
    ref = g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    cos = (r.double() * ref).flatten(1).sum(dim=1)
    assert (cos > 0.99).all(), cos


def test_preserve_buffers_restores_running_stats_after_train_forward():
    net = _tiny_unet()
    loss = net(torch.randn(2, 1, 32, 32)).mean()  # a step's main forward, updating the stats
    before = _buffers(net)
    with preserve_buffers(net):
        adv = net(torch.randn(2, 1, 32, 32) * 5 + 3).mean()
        assert not _same(before, _buffers(net))  # train mode did update them
    assert _same(before, _buffers(net))
    (loss + adv).backward()  # the restore did not invalidate tensors saved for backward


# ------------------------------------------------------------------- labeled split


def test_labeled_split_is_stable_disjoint_and_covering():
    names = [f"case_{i:03d}" for i in range(40)]
    first, second = split_labeled(names)
    assert sorted(first + second) == list(range(40)) and not set(first) & set(second)
    assert first and second
    # Stable: a plain SHA-256 of the name, the same in any process.
    assert [labeled_half(n) for n in names] == [hashlib.sha256(n.encode()).digest()[0] & 1 for n in names]
    code = "import sys; from semisup.methods.uadct import labeled_half; print(''.join(str(labeled_half(n)) for n in sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": str(REPO / "SemiSupUncertainty"), "PYTHONHASHSEED": "123", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "".join(str(labeled_half(n)) for n in names)
    # Items of one case always go to the same network, whatever the batch.
    assert split_labeled(["case_007", "case_007"]) in (([0, 1], []), ([], [0, 1]))
    # Another salt draws another split.
    assert [labeled_half(n, "s1") for n in names] != [labeled_half(n) for n in names]


def _method(name: str, **params) -> torch.nn.Module:
    cfg = RunConfig(
        data=DataConfig(spatial_dims=2, patch_size=[32, 32]),
        network=NetworkConfig(name="unet2d", base_filters=4),
        method=MethodConfig(name=name, params=params),
    )
    torch.manual_seed(0)
    return build_method(cfg, num_classes=2)


def _batch(names: list[str], unlabeled: int = 2):
    torch.manual_seed(5)
    n = len(names)
    lab = {"image": torch.randn(n, 1, 32, 32), "label": (torch.rand(n, 1, 32, 32) > 0.5).long(), "name": names}
    unl = {"image": torch.randn(unlabeled, 1, 32, 32), "name": [f"u{i}" for i in range(unlabeled)]} if unlabeled else None
    return lab, unl


def test_registered_with_two_differently_initialised_networks():
    assert {"uadct", "cps"} <= set(method_names())
    for name in ("uadct", "cps"):
        m = _method(name)
        assert len(m.inference_networks()) == 2 and set(m.per_model_networks()) == {"model1", "model2"}
        w1, w2 = (next(n.parameters()) for n in m.inference_networks())
        assert not torch.equal(w1, w2)
        assert m.uncertainty_description()


def test_params_validation_names_the_problem():
    with pytest.raises(ConfigError, match="sup_weight"):
        build_params(UADCTParams, {"sup_weight": "exp"}, "uadct")
    with pytest.raises(ConfigError, match="unknown parameter"):
        build_params(UADCTParams, {"vat_epsilon": 1.0}, "uadct")
    with pytest.raises(ConfigError, match="sup_loss"):
        build_params(UADCTParams, {"sup_loss": "dice"}, "uadct")
    assert UADCTParams(iterations_per_epoch=7).uncertainty_start_iteration() == 140  # 20 epochs


def test_uadct_ce_dice_option_adds_half_the_dice():
    from semisup.methods.losses import soft_dice_loss

    lab, _ = _batch(["a"], unlabeled=0)
    ref = _method("uadct", mc_samples=2, lambda_cot=0.0, lambda_adv=0.0, sup_uncertainty_start=100)
    m = copy.deepcopy(ref)
    m.params = UADCTParams(**{**vars(ref.params), "sup_loss": "ce_dice"})
    net = m.per_model_networks()[f"model{labeled_half('a') + 1}"]
    torch.manual_seed(3)
    ce = ref.training_step(lab, None, step=0, max_steps=10).loss
    torch.manual_seed(3)
    both = m.training_step(lab, None, step=0, max_steps=10).loss
    torch.manual_seed(3)
    dice = soft_dice_loss(net(lab["image"]), lab["label"])  # same dropout draw as the step's forward
    assert both.item() == pytest.approx(0.5 * (ce.item() + dice.item()), rel=1e-5)


def test_uadct_each_network_is_supervised_by_its_half_only():
    names = [f"c{i}" for i in range(20)]
    half0 = [n for n in names if labeled_half(n) == 0][:2]
    m = _method("uadct", mc_samples=2, lambda_cot=0.0, lambda_adv=0.0)
    lab, _ = _batch(half0, unlabeled=0)
    out = m.training_step(lab, None, step=0, max_steps=10)
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.net1.parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in m.net2.parameters())
    assert out.logs["sup2"].item() == 0.0


def test_uadct_step_all_terms_and_no_adversarial_running_stats():
    names = [f"c{i}" for i in range(20)]
    mixed = [next(n for n in names if labeled_half(n) == 0), next(n for n in names if labeled_half(n) == 1)]
    lab, unl = _batch(mixed)
    base = _method("uadct", mc_samples=2, iterations_per_epoch=1, rampup_epochs=1, unsup_uncertainty_start=0)
    for prob in (1.0, 0.0):  # FGSM branch, then VAT branch
        m = copy.deepcopy(base)
        m.params = UADCTParams(**{**vars(base.params), "fgsm_probability": prob})
        torch.manual_seed(11)
        out = m.training_step(lab, unl, step=5, max_steps=10)
        assert torch.isfinite(out.loss)
        assert {"sup1", "sup2", "agreement", "agreement_weight", "diversity"} <= set(out.logs)
        assert out.logs["diversity_fgsm"].item() == prob
        assert out.logs["diversity"].item() > 0
        out.loss.backward()
        # Same step without the diversity term: the running statistics must be identical.
        ref = copy.deepcopy(base)
        ref.params = UADCTParams(**{**vars(base.params), "lambda_adv": 0.0})
        torch.manual_seed(11)
        ref.training_step(lab, unl, step=5, max_steps=10)
        assert _same(_buffers(m), _buffers(ref))
    # Disagreement map: JS of the two networks, in [0, ln 2], modes restored.
    js = base.disagreement(unl["image"])
    assert js.shape == (2, 1, 32, 32) and js.min() >= 0 and js.max() <= LN2 + 1e-6
    assert base.net1.training
    # The same map on a whole image of any size, and a 3D volume slice by slice (2D nets).
    whole = base.own_uncertainty_map(unl["image"][:1])
    assert torch.allclose(whole, base.disagreement(unl["image"][:1]))
    vol = base.own_uncertainty_map(torch.randn(1, 1, 30, 27, 3))
    assert vol.shape == (1, 1, 30, 27, 3) and vol.min() >= 0 and vol.max() <= LN2 + 1e-6
    assert base.own_uncertainty_name == "disagreement"


def test_uadct_under_autocast_keeps_attacks_in_float32():
    # The engine autocasts on CUDA; CPU bfloat16 autocast exercises the same code paths.
    lab, unl = _batch(["a", "b"])
    m = _method("uadct", mc_samples=2, iterations_per_epoch=1, rampup_epochs=1, unsup_uncertainty_start=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        r = vat_perturbation(m.net1, unl["image"], eps=10.0)
        for prob in (1.0, 0.0):
            m.params = UADCTParams(**{**vars(m.params), "fgsm_probability": prob})
            out = m.training_step(lab, unl, step=5, max_steps=10)
            assert torch.isfinite(out.loss) and "diversity" in out.logs
    assert r.dtype == torch.float32
    assert r.flatten(1).norm(dim=1).tolist() == pytest.approx([10.0, 10.0], rel=1e-5)
    out.loss.backward()


def test_uadct_agreement_is_plain_before_the_uncertainty_start():
    lab, unl = _batch(["a", "b"])
    m = _method("uadct", mc_samples=2, unsup_uncertainty_start=100, lambda_adv=0.0)
    out = m.training_step(lab, unl, step=3, max_steps=200)
    assert "agreement" in out.logs and "agreement_weight" not in out.logs
    m.params = UADCTParams(**{**vars(m.params), "agreement_before_start": "off"})
    assert "agreement" not in m.training_step(lab, unl, step=3, max_steps=200).logs


def test_cps_step_on_labeled_and_unlabeled():
    lab, unl = _batch(["a", "b"])
    m = _method("cps", iterations_per_epoch=1, consistency_rampup=1)
    out = m.training_step(lab, unl, step=10, max_steps=10)
    assert torch.isfinite(out.loss) and out.logs["cps"].item() > 0
    assert out.logs["consistency_weight"].item() == pytest.approx(0.1)
    out.loss.backward()
    assert all(any(p.grad is not None for p in n.parameters()) for n in m.inference_networks())
    # SSL4MIS variant: unlabeled only; without unlabeled images the CPS term is 0.
    m = _method("cps", cps_on_labeled=False)
    assert m.training_step(lab, None, step=0, max_steps=10).logs["cps"].item() == 0.0


# ----------------------------------------------------------------- end to end (engine)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from semisup.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic_codct")
    return make_synthetic_dataset(root, labeled=3, unlabeled=2, validation=1, test=0, shape=(32, 32, 16), seed=3)


E2E_PARAMS = {
    "uadct": {
        "mc_samples": 2,
        "iterations_per_epoch": 2,
        "rampup_epochs": 3,
        "unsup_uncertainty_start": 4,
        "vat_eps": 1.0,
    },
    "cps": {"iterations_per_epoch": 2, "consistency_rampup": 3},
}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["uadct", "cps"])
def test_end_to_end_train_checkpoint_reload_predict(dataset, tmp_path, method):
    from semisup.data import DatasetSpec, preprocess_image, read_image
    from semisup.engine.trainer import Trainer
    from semisup.engine.predict import load_trained, predict_array

    iterations = 8
    cfg = RunConfig(
        data=DataConfig(dataset=str(dataset), patch_size=[32, 32, 16]),
        network=NetworkConfig(name="vnet", base_filters=4),
        method=MethodConfig(name=method, params=E2E_PARAMS[method]),
        train=TrainConfig(iterations=iterations, lr=0.01, val_every=iterations, checkpoint_every=iterations, log_every=1),
        inference=InferenceConfig(mc_samples=1, overlap=0.0),
    )
    events = []
    result = Trainer(cfg, tmp_path / "run", emit=lambda event, **f: events.append({"event": event, **f})).fit()
    assert result.iteration == iterations
    its = [e for e in events if e["event"] == "iteration"]
    assert its and all(math.isfinite(e["loss"]) for e in its)
    if method == "uadct":
        logged = set().union(*(e["losses"] for e in its))
        assert {"sup1", "sup2", "agreement", "agreement_weight", "diversity"} <= logged

    trained = load_trained(result.best_checkpoint)
    assert type(trained.method).name == method and len(trained.networks) == 2
    spec = DatasetSpec.from_json(dataset)
    image = preprocess_image(read_image(spec.validation[0].image), cfg.data)
    out = predict_array(trained.networks, image, cfg, torch.device("cpu"), mc_samples=1)
    assert np.isfinite(out["entropy"]).all() and out["label"].shape == out["entropy"].shape
    # Two networks, one pass each: the mutual information is their JS divergence.
    assert out["mutual_information"].min() >= 0 and out["mutual_information"].max() <= LN2 + 1e-5
    single = predict_array([trained.method.per_model_networks()["model1"]], image, cfg, torch.device("cpu"), mc_samples=1)
    assert single["label"].shape == out["label"].shape
    if method == "uadct":  # the command-line path writes UA-DCT's own map beside the others
        import SimpleITK as sitk

        from semisup.engine.predict import predict_files

        predict_files(trained, [spec.validation[0].image], tmp_path / "pred", mc_samples=1)
        written = sorted(p.name for p in (tmp_path / "pred").glob("*_disagreement.nrrd"))
        assert len(written) == 1
        js = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "pred" / written[0])))
        assert np.isfinite(js).all() and js.min() >= 0 and js.max() <= LN2 + 1e-5
