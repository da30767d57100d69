"""CoraNet and DUST: hand-computed formulas, schedules and state, and tiny runs through the real engine.

Sources: methods.md (CoraNet, DUST), 003_a8da498be8c87e89 (CoraNet), 004_578d44feb07d83d9 (DUST).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from semisup.config import ConfigError, DataConfig, InferenceConfig, MethodConfig, NetworkConfig, RunConfig, TrainConfig
from semisup.engine import trainer as trainer_module
from semisup.engine.checkpoint import load_checkpoint
from semisup.engine.events import Emitter
from semisup.engine.trainer import Trainer
from semisup.methods import METHODS, build_method
from semisup.methods.coranet import (
    CoraNet,
    certain_uncertain_masks,
    coranet_class_weights,
    masked_ce,
    masked_soft_dice,
    masked_sq_distance,
    weighted_ce,
)
from semisup.methods.dust import (
    DUST,
    kl_uncertainty_map,
    rectified_pseudo_label_loss,
    sample_uncertainty,
    snapshot_iterations,
    split_by_uncertainty,
)
from semisup.methods.volume_apply import apply_to_image
from semisup.engine.predict import load_trained
from semisup.data.synthetic import make_synthetic_dataset

LN2, LN4 = math.log(2.0), math.log(4.0)


def _logits(*probs: list[float]) -> torch.Tensor:
    """(1, C, N) logits whose softmax is the given per-pixel distributions."""
    return torch.log(torch.tensor(probs, dtype=torch.float64)).T.unsqueeze(0)


def _cfg(method: str, params: dict[str, Any], num_dims: int = 2, dataset: str = "", **train: Any) -> RunConfig:
    net = NetworkConfig(name="unet2d" if num_dims == 2 else "vnet", base_filters=4)
    patch = [32, 32] if num_dims == 2 else [32, 32, 16]
    return RunConfig(
        data=DataConfig(dataset=dataset, spatial_dims=num_dims, patch_size=patch),
        network=net,
        method=MethodConfig(name=method, params=params),
        train=TrainConfig(device="cpu", amp=False, **train),
        inference=InferenceConfig(mc_samples=2, overlap=0.0),
    )


# ---------------------------------------------------------------------- CoraNet formulas


def test_registered_by_name():
    assert METHODS["coranet"] is CoraNet and METHODS["dust"] is DUST


def test_certain_and_uncertain_masks_by_hand():
    # Four pixels, binary: con says 0,0,1,1 and rad says 0,1,0,1 -> agree on pixels 0 and 3.
    con = torch.tensor([[[2.0, 1.0, -1.0, -2.0], [0.0, 0.0, 0.0, 0.0]]])
    rad = torch.tensor([[[1.0, -1.0, 1.0, -1.0], [0.0, 0.0, 0.0, 0.0]]])
    certain, uncertain = certain_uncertain_masks(con, rad)
    assert certain.tolist() == [[1.0, 0.0, 0.0, 1.0]]
    assert uncertain.tolist() == [[0.0, 1.0, 1.0, 0.0]]  # the XOR of the two binary predictions
    # Three classes: two different foreground labels are a disagreement too.
    con3 = torch.tensor([[[0.0, 0.0], [0.0, 5.0], [5.0, 0.0]]])  # labels 2, 1
    rad3 = torch.tensor([[[0.0, 0.0], [5.0, 5.0], [0.0, 0.0]]])  # labels 1, 1
    assert certain_uncertain_masks(con3, rad3)[0].tolist() == [[0.0, 1.0]]


def test_class_weights_binary_is_eq1_and_multiclass_extension():
    assert coranet_class_weights(2, 5.0) == ([5.0, 1.0], [1.0, 5.0])  # w_con = (alpha, 1), w_rad = (1, alpha)
    assert coranet_class_weights(4, 5.0) == ([5.0, 1.0, 1.0, 1.0], [1.0, 5.0, 5.0, 5.0])


def test_weighted_ce_two_pixels_by_hand():
    # Pixel A: p = (1/2, 1/2), label 0 -> ce ln 2.  Pixel B: p = (1/4, 3/4), label 1 -> ce ln(4/3).
    logits = _logits([0.5, 0.5], [0.25, 0.75]).float()
    target = torch.tensor([[0, 1]])
    # conservative (5, 1): (5 ln2 + 1 ln(4/3)) / (5 + 1)
    assert weighted_ce(logits, target, torch.tensor([5.0, 1.0])).item() == pytest.approx(0.6255697, abs=1e-6)
    # radical (1, 5): (ln2 + 5 ln(4/3)) / 6
    assert weighted_ce(logits, target, torch.tensor([1.0, 5.0])).item() == pytest.approx(0.3552595, abs=1e-6)
    # (B, 1, *) targets are accepted as the engine's labels are
    assert weighted_ce(logits, target[:, None], torch.tensor([1.0, 5.0])).item() == pytest.approx(0.3552595, abs=1e-6)


def test_masked_ce_is_normalised_by_mask_sum():
    # ce per pixel: ln2, ln(4/3), ln4 (p = 1/4 on label 0), ln2
    logits = _logits([0.5, 0.5], [0.25, 0.75], [0.25, 0.75], [0.5, 0.5]).float()
    target = torch.tensor([[0, 1, 0, 1]])
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert masked_ce(logits, target, mask).item() == pytest.approx((LN2 + math.log(4 / 3)) / 2, abs=1e-6)
    mask = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    assert masked_ce(logits, target, mask).item() == pytest.approx(LN4, abs=1e-6)
    assert masked_ce(logits, target, torch.zeros(1, 4)).item() == 0.0  # empty certain region: 0, not NaN


def test_masked_soft_dice_by_hand():
    # Pixel 1: p = (.5, .5), label 0; pixel 2: p = (.25, .75), label 1.
    logits = _logits([0.5, 0.5], [0.25, 0.75]).float()
    target = torch.tensor([[0, 1]])
    # both pixels: class 0: 2*0.5 / (1.5 + 0.25); class 1: 2*0.75 / (0.5 + 1.75)
    expected = 1 - (1.0 / 1.75 + 1.5 / 2.25) / 2
    assert masked_soft_dice(logits, target, torch.ones(1, 2)).item() == pytest.approx(expected, abs=1e-5)
    # pixel 1 only: class 0: 1 / 1.5; class 1: (0 + 1e-5) / (0.5 + 1e-5)
    expected = 1 - (1.0 / 1.5 + 1e-5 / 0.50001) / 2
    assert masked_soft_dice(logits, target, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(expected, abs=1e-5)


def test_masked_soft_dice_over_batch_by_hand():
    # Two samples of one pixel each: p = (.5, .5) label 0, and p = (.25, .75) label 1.
    logits = torch.cat([_logits([0.5, 0.5]), _logits([0.25, 0.75])]).float()
    target = torch.tensor([[0], [1]])
    ones = torch.ones(2, 1)
    # Over the batch: class 0: 2*0.5 / (1.5 + 0.25); class 1: 2*0.75 / (0.5 + 1.75).
    expected = 1 - (1.0 / 1.75 + 1.5 / 2.25) / 2
    assert masked_soft_dice(logits, target, ones, over_batch=True).item() == pytest.approx(expected, abs=1e-5)
    # Per sample, the class absent from each sample scores ~0: 1 - (1/1.5 + 0 + 0 + 1.5/1.75) / 4.
    expected = 1 - (1.0 / 1.5 + 1.5 / 1.75) / 4
    assert masked_soft_dice(logits, target, ones).item() == pytest.approx(expected, abs=1e-4)


def test_masked_sq_distance_by_hand():
    p_s = torch.tensor([[[0.5, 0.2], [0.5, 0.8]]])  # (1, C=2, N=2)
    p_t = torch.tensor([[[1.0, 0.2], [0.0, 0.8]]])
    # pixel 1: 0.25 + 0.25 = 0.5; pixel 2: 0
    assert masked_sq_distance(p_s, p_t, torch.tensor([[1.0, 1.0]])).item() == pytest.approx(0.25)
    assert masked_sq_distance(p_s, p_t, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(0.5)
    assert masked_sq_distance(p_s, p_t, torch.zeros(1, 2)).item() == 0.0


def test_coranet_schedule_snapshot_state_and_inference():
    torch.manual_seed(0)
    cfg = _cfg("coranet", {"pretrain_iterations": 2, "refresh_every": 3})
    method = build_method(cfg, num_classes=3)
    x = torch.randn(2, 1, 32, 32)
    y = torch.randint(0, 3, (2, 1, 32, 32))
    refreshed = []
    for step in range(9):
        method.on_iteration_start(step, context=None)
        refreshed.append(method.get_extra_state()["snapshot_step"])
        x_u = torch.randn(2, 1, 32, 32)
        out = method.training_step({"image": x, "label": y}, {"image": x_u}, step, 9)
        assert torch.isfinite(out.loss)
        assert ("certain" in out.logs) == (step >= 2)
        if step >= 2:  # share of pseudo-labelled foreground, from the snapshot
            plab = method.pseudo_labels(x_u)[0]
            assert out.logs["pseudo_foreground"].item() == pytest.approx((plab > 0).float().mean().item())
        out.loss.backward()
        with torch.no_grad():  # a stand-in optimizer step so the snapshots differ
            for p in method.trainable_parameters():
                p -= 0.01 * p.grad
                p.grad = None
        method.after_optimizer_step(step)
    # refreshed at the start of self-training and every 3 iterations after
    assert refreshed == [-1, -1, 2, 2, 2, 5, 5, 5, 8]
    # frozen copies are not trained
    trainable = {id(p) for p in method.trainable_parameters()}
    assert not any(id(p) in trainable for p in method.snapshot.parameters())
    assert not any(id(p) in trainable for p in method.teacher.parameters())
    # the snapshot and its step survive a state_dict round trip (resume)
    fresh = build_method(cfg, num_classes=3)
    fresh.load_state_dict(method.state_dict())
    assert fresh.get_extra_state() == {"snapshot_step": 8}
    for a, b in zip(fresh.snapshot.state_dict().values(), method.snapshot.state_dict().values()):
        assert torch.equal(a, b)
    # inference: the main head alone; CoraNet's own map is binary on the image grid
    method.eval()
    (net,) = method.inference_networks()
    assert torch.allclose(net(x), method.net.forward_heads(x)["main"])
    region = method.region_uncertainty(torch.randn(1, 1, 30, 20, 3))
    assert region.shape == (1, 1, 30, 20, 3)
    assert set(region.unique().tolist()) <= {0.0, 1.0}
    assert "disagree" in method.uncertainty_description()


@pytest.mark.parametrize("winner, warned", [(0, True), (1, False)])
def test_coranet_warns_when_pseudo_labels_hold_no_object(caplog, winner, warned):
    method = build_method(_cfg("coranet", {"pretrain_iterations": 1, "refresh_every": 2}), num_classes=3)
    last = method.net.heads["main"].layers[-1]
    with torch.no_grad():  # the main head names class `winner` everywhere
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.0, 0.0, 0.0]).index_fill(0, torch.tensor(winner), 50.0))
    batch = {"image": torch.randn(2, 1, 32, 32), "label": torch.zeros(2, 1, 32, 32, dtype=torch.long)}
    with caplog.at_level("WARNING", logger="semisup.methods.coranet"):
        for step in range(6):  # self-training from 1, refreshes at 1, 3 and 5
            method.on_iteration_start(step, context=None)
            method.training_step(batch, {"image": torch.randn(2, 1, 32, 32)}, step, 6)
    messages = [r.getMessage() for r in caplog.records if "no object pixel" in r.getMessage()]
    assert len(messages) == (1 if warned else 0)  # once per run, not at every refresh
    if warned:
        assert "iterations 1-2" in messages[0] and "pretrain_iterations=1" in messages[0]


def test_coranet_parameter_errors():
    with pytest.raises(ConfigError, match="con_weights"):
        build_method(_cfg("coranet", {"con_weights": [1.0, 2.0, 3.0]}), num_classes=2)
    with pytest.raises(ConfigError, match="unknown parameter"):
        build_method(_cfg("coranet", {"beta": 1.0}), num_classes=2)


# ---------------------------------------------------------------------- DUST formulas


def test_sample_uncertainty_by_hand():
    final = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # F_K: (1, C=2, N=2)
    f1 = torch.full((1, 2, 2), 0.5)  # every entry differs by 0.5 -> mean square 0.25
    f2 = final.clone()  # identical -> 0
    assert sample_uncertainty([f1, f2], final) == pytest.approx(0.125)  # (0.25 + 0) / (K - 1), K = 3
    assert sample_uncertainty([f1], final) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        sample_uncertainty([], final)


def test_kl_per_pixel_by_hand():
    main = _logits([0.5, 0.5], [0.1, 0.9]).float()
    aux = _logits([0.25, 0.75], [0.1, 0.9]).float()
    kl = kl_uncertainty_map(main, aux)
    # 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75) = 0.5 (ln 2 + ln 2/3); identical distributions: 0
    assert kl.shape == (1, 2)
    assert kl[0, 0].item() == pytest.approx(0.1438410, abs=1e-6)
    assert kl[0, 1].item() == pytest.approx(0.0, abs=1e-6)


def test_rectified_loss_by_hand_and_gradients():
    ce = torch.tensor([1.0, 2.0])
    d = torch.tensor([0.0, LN2])
    # (exp(0) 1 + 0 + exp(-ln2) 2 + ln2) / 2 = (1 + 1 + ln 2) / 2
    assert rectified_pseudo_label_loss(ce, d).item() == pytest.approx((2.0 + LN2) / 2, abs=1e-6)
    # d/dD of exp(-D) ce + D is 1 - exp(-D) ce: with D = 0 and ce = (1, 3) that is (0, -2), over 2 pixels
    d = torch.zeros(2, requires_grad=True)
    rectified_pseudo_label_loss(torch.tensor([1.0, 3.0]), d).backward()
    assert d.grad.tolist() == pytest.approx([0.0, -1.0])
    d = torch.zeros(2, requires_grad=True)
    rectified_pseudo_label_loss(torch.tensor([1.0, 3.0]), d, detach_weight=True).backward()
    assert d.grad.tolist() == pytest.approx([0.5, 0.5])


def test_two_stage_selection_order():
    names = ["a", "b", "c", "d", "e"]
    scores = [0.3, 0.1, 0.5, 0.2, 0.1]
    # ascending, ties by name: b, e, d, a, c; first floor(0.5 * 5) = 2
    assert split_by_uncertainty(names, scores, 0.5) == (["b", "e"], ["d", "a", "c"])
    assert split_by_uncertainty(names, scores, 0.1) == (["b"], ["e", "d", "a", "c"])  # at least one
    assert split_by_uncertainty(names, scores, 1.0) == (["b", "e", "d", "a", "c"], [])
    assert split_by_uncertainty([], [], 0.5) == ([], [])


def test_snapshot_iterations_evenly_spaced():
    assert snapshot_iterations(10, 3) == [3, 7]  # snapshot K is the model after all 10
    assert snapshot_iterations(4, 2) == [2]
    assert snapshot_iterations(5, 5) == [1, 2, 3, 4]


def test_apply_to_image_pads_and_slices():
    # A 2D "network" that reports its input size: padded to 16, cropped back, slice-wise along z.
    seen = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape))
        return x * 2

    image = torch.arange(20 * 18 * 3, dtype=torch.float32).reshape(1, 1, 20, 18, 3)
    out = apply_to_image(fn, image, spatial_dims=2, divisor=16, slice_chunk=2)
    assert torch.equal(out, image * 2)
    assert seen == [(2, 1, 32, 32), (1, 1, 32, 32)]


def test_dust_snapshots_and_state_roundtrip():
    cfg = _cfg("dust", {"pretrain_iterations": 4, "stage_iterations": 2, "snapshots": 3})
    method = build_method(cfg, num_classes=2)
    assert method.snapshot_at == [1, 3]
    for step in range(4):
        with torch.no_grad():
            for p in method.net.parameters():
                p.add_(0.1)
        method.after_optimizer_step(step)
    assert method.get_extra_state()["snapshots_taken"] == 2
    first = next(method.snapshot_nets[0].parameters())
    second = next(method.snapshot_nets[1].parameters())
    assert torch.allclose(second - first, torch.full_like(first, 0.2))  # taken after iterations 1 and 3
    fresh = build_method(cfg, num_classes=2)
    fresh.load_state_dict(method.state_dict())
    assert fresh.get_extra_state() == method.get_extra_state()
    assert torch.equal(next(fresh.snapshot_nets[1].parameters()), second)


def test_dust_needs_unet2d():
    with pytest.raises(ConfigError, match="unet2d"):
        build_method(_cfg("dust", {"pretrain_iterations": 4}, num_dims=3), num_classes=2)
    with pytest.raises(ConfigError, match="snapshots"):
        build_method(_cfg("dust", {"snapshots": 1}), num_classes=2)


# ---------------------------------------------------------------------- end to end (real engine)


class _Events:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def emit(self, event: dict[str, Any]) -> None:
        self.records.append(event)

    def close(self) -> None:
        pass

    def losses(self) -> list[float]:
        return [r["loss"] for r in self.records if r["event"] == "iteration"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic_cd")
    return make_synthetic_dataset(root, labeled=2, unlabeled=4, validation=1, test=0, shape=(32, 32, 16), seed=5)


def _e2e_cfg(dataset: Path, method: str, params: dict[str, Any], iterations: int) -> RunConfig:
    return _cfg(
        method,
        params,
        dataset=str(dataset),
        iterations=iterations,
        labeled_batch=2,
        unlabeled_batch=2,
        lr=0.01,
        val_every=iterations,
        checkpoint_every=4,
        log_every=1,
    )


@pytest.mark.slow
def test_coranet_end_to_end(dataset, tmp_path):
    cfg = _e2e_cfg(dataset, "coranet", {"pretrain_iterations": 3, "refresh_every": 2}, iterations=8)
    events = _Events()
    result = Trainer(cfg, tmp_path / "run", emit=Emitter([events])).fit()
    losses = events.losses()
    assert len(losses) == 8 and all(math.isfinite(v) for v in losses)
    state = load_checkpoint(result.last_checkpoint)
    assert state["method"]["_extra_state"] == {"snapshot_step": 7}  # refreshed at 3, 5, 7
    model = load_trained(result.best_checkpoint)
    assert isinstance(model.method, CoraNet)
    (net,) = model.networks
    assert net(torch.zeros(1, 1, 32, 32)).shape == (1, 2, 32, 32)


@pytest.mark.slow
def test_dust_end_to_end_stages_and_resume(dataset, tmp_path, monkeypatch):
    subsets: list[list[str] | None] = []
    original_subset = trainer_module._Context.set_unlabeled_subset

    def spy_subset(self, names):
        subsets.append(None if names is None else list(names))
        return original_subset(self, names)

    seen: list[tuple[int, list[str]]] = []
    original_step = DUST.training_step

    def spy_step(self, labeled, unlabeled, step, max_steps):
        seen.append((step, sorted(set(unlabeled["name"])) if unlabeled is not None else []))
        return original_step(self, labeled, unlabeled, step, max_steps)

    monkeypatch.setattr(trainer_module._Context, "set_unlabeled_subset", spy_subset)
    monkeypatch.setattr(DUST, "training_step", spy_step)

    # Pre-training 0..2 (K = 2: snapshot 1 after 2 iterations), stage 1 3..6, stage 2 from 7.
    params = {"pretrain_iterations": 3, "stage_iterations": 4, "snapshots": 2}
    run = tmp_path / "run"
    events = _Events()
    Trainer(_e2e_cfg(dataset, "dust", params, iterations=5), run, emit=Emitter([events])).fit()
    assert all(math.isfinite(v) for v in events.losses())
    state = load_checkpoint(run / "checkpoints" / "last.pt")["method"]["_extra_state"]
    assert state["stage"] == 1 and state["snapshots_taken"] == 1
    assert len(state["ranked"]) == 4 and state["scores"] == sorted(state["scores"])
    first = state["first_stage"]
    assert first == state["ranked"][:2]
    assert subsets[-1] == first  # the reliable half was applied
    for step, names in seen:
        if step >= 3:
            assert set(names) <= set(first), (step, names)

    # Resume mid stage 1: the subset comes back from the checkpoint, then stage 2 takes all cases.
    subsets.clear()
    seen.clear()
    events = _Events()
    result = Trainer(_e2e_cfg(dataset, "dust", params, iterations=9), run, emit=Emitter([events]), resume=True).fit()
    assert subsets[0] == first
    assert subsets[-1] is None
    assert [s for s, _ in seen] == [5, 6, 7, 8]
    assert all(set(names) <= set(first) for step, names in seen if step < 7)
    assert all(math.isfinite(v) for v in events.losses())
    state = load_checkpoint(result.last_checkpoint)["method"]["_extra_state"]
    assert state["stage"] == 2 and state["first_stage"] == first

    model = load_trained(result.last_checkpoint)  # best.pt may hold the stage-1 model
    assert isinstance(model.method, DUST) and model.method.stage == 2
    (net,) = model.networks
    assert net(torch.zeros(1, 1, 32, 32)).shape == (1, 2, 32, 32)
    kl = model.method.pixel_uncertainty(torch.zeros(1, 1, 32, 32, 4))
    assert kl.shape == (1, 1, 32, 32, 4) and bool((kl >= -1e-6).all())
