"""UCMT (Shen et al. IJCAI 2023): UMIX moves, teacher EMA, loss composition, config, learning."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from semisup.config import (
    ConfigError,
    DataConfig,
    InferenceConfig,
    MethodConfig,
    NetworkConfig,
    RunConfig,
    TrainConfig,
    load_config,
)
from semisup.inference.uncertainty import predictive_entropy
from semisup.methods import build_method
from semisup.methods.base import build_params
from semisup.methods.losses import soft_dice_loss
from semisup.methods.ucmt import UCMT, UCMTParams
from semisup.methods.umix import from_patches, patch_shape, to_patches, umix, umix_moves

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "SemiSupUncertainty" / "semisup" / "configs"


# --------------------------------------------------------------------------- UMIX helpers


def patch_ids(spatial: tuple[int, ...], grid: tuple[int, ...]) -> torch.Tensor:
    """Row-major patch index of every voxel, computed independently of umix.py."""
    psize = [s // g for s, g in zip(spatial, grid)]
    coords = torch.meshgrid(*[torch.arange(s) for s in spatial], indexing="ij")
    ids = torch.zeros(spatial, dtype=torch.long)
    for axis, c in enumerate(coords):
        ids = ids * grid[axis] + c // psize[axis]
    return ids


def hand_map(values: dict[int, float], n_patches: int, ids: torch.Tensor, wobble: dict[int, float] | None = None) -> torch.Tensor:
    """Uncertainty constant per patch: ``values`` where given, else 0.5 + 0.01 i (distinct).

    ``wobble`` adds a zero-mean +-a checkerboard inside a patch: it changes the
    patch's maximum but not its mean, so ranking by anything but the mean shows.
    """
    per_patch = torch.tensor([values.get(i, 0.5 + 0.01 * i) for i in range(n_patches)])
    u = per_patch[ids].clone()
    checker = sum(torch.meshgrid(*[torch.arange(s) for s in ids.shape], indexing="ij")) % 2 * 2 - 1
    for patch, amp in (wobble or {}).items():
        u[ids == patch] += amp * checker[ids == patch].float()
    return u


def expected_from_mapping(ids: torch.Tensor, mapping: dict[int, int]) -> torch.Tensor:
    """Patch-id map after moves: patch ``dst`` now holds the content of patch ``mapping[dst]``."""
    out = ids.clone()
    for dst, src in mapping.items():
        out[ids == dst] = src
    return out


def check_hand_made(spatial, grid, samples) -> None:
    """Images/labels carry their own patch ids, so the mixed result shows which patch went where."""
    ids = patch_ids(spatial, grid)
    n = math.prod(grid)
    b = len(samples)
    u1 = torch.stack([hand_map(s["u1"], n, ids, s.get("wobble")) for s in samples])[:, None]
    u2 = torch.stack([hand_map(s["u2"], n, ids) for s in samples])[:, None]
    # Two image channels with different content, offset per sample: moves stay within a sample.
    images = torch.stack([torch.stack([ids.float() + 100 * i, -ids.float()]) for i in range(b)])
    labels = ids.expand(b, 1, *spatial).clone()
    mixed_img, mixed_lab = umix(images, labels, u1, u2, k=2, grid=grid)
    for i, s in enumerate(samples):
        want = expected_from_mapping(ids, s["mapping"])
        assert torch.equal(mixed_lab[i, 0], want), f"sample {i}: labels moved wrongly"
        assert torch.equal(mixed_img[i, 0], want.float() + 100 * i), f"sample {i}: image channel 0"
        assert torch.equal(mixed_img[i, 1], -want.float()), f"sample {i}: image channel 1"
    assert mixed_lab.dtype == torch.long and mixed_img.dtype == torch.float32


# --------------------------------------------------------------------------- UMIX tests


def test_umix_2d_hand_made_batch():
    # 8 x 8 image, grid 4 x 4 -> 16 patches of 2 x 2, k = 2.
    # Move 1: the 2 most uncertain under U1 <- the 2 most certain under U2, paired as the
    # authors' code does (dst order1[:k], src order2[-k:]: the most uncertain gets the
    # 2nd most certain). Move 2 (after move 1): most uncertain under U2 <- most certain under U1.
    samples = [
        # U1 top 5 (0.9), 9 (0.8); U1 bottom 2 (0.1), 14 (0.05): order1[-2:] = [2, 14]
        # U2 top 7, 12;            U2 bottom 11 (0.08), 0 (0.02): order2[-2:] = [11, 0]
        # Patch 4 has a checkerboard of +-0.45: max 0.99 > 0.9 but mean 0.54, stays put.
        dict(
            u1={5: 0.9, 9: 0.8, 2: 0.1, 14: 0.05},
            u2={7: 0.95, 12: 0.85, 0: 0.02, 11: 0.08},
            wobble={4: 0.45},
            mapping={5: 11, 9: 0, 7: 2, 12: 14},
        ),
        # Patch 6 is the most uncertain under both maps: move 1 writes 13 there, then
        # move 2 overwrites it with 8 (the code's in-place order).
        dict(
            u1={6: 0.9, 3: 0.8, 15: 0.01, 8: 0.03},
            u2={6: 0.9, 10: 0.8, 1: 0.02, 13: 0.04},
            mapping={6: 8, 3: 1, 10: 15},
        ),
        # The same map twice: both moves fill the same 2 patches from the same 2 sources.
        dict(
            u1={1: 0.9, 2: 0.8, 3: 0.1, 4: 0.05},
            u2={1: 0.9, 2: 0.8, 3: 0.1, 4: 0.05},
            mapping={1: 3, 2: 4},
        ),
    ]
    check_hand_made((8, 8), (4, 4), samples)


def test_umix_3d_hand_made_batch():
    # 8 x 8 x 4 volume, grid 2 x 2 x 2 -> 8 patches of 4 x 4 x 2, k = 2.
    samples = [
        # U1: top 3, 6; bottom order1[-2:] = [1, 0]. U2: top 2, 5; bottom order2[-2:] = [7, 4].
        dict(
            u1={3: 0.9, 6: 0.8, 1: 0.1, 0: 0.05},
            u2={2: 0.9, 5: 0.8, 7: 0.1, 4: 0.05},
            wobble={2: 0.45},
            mapping={3: 7, 6: 4, 2: 1, 5: 0},
        ),
        # U1: top 0, 1; order1[-2:] = [7, 5]. U2: top 0, 2; order2[-2:] = [3, 6].
        # Overlapping destination 0: move 1 puts 3 there, move 2 overwrites it with 7.
        dict(u1={0: 0.9, 1: 0.8, 7: 0.1, 5: 0.05}, u2={0: 0.95, 2: 0.85, 3: 0.1, 6: 0.05}, mapping={0: 7, 1: 6, 2: 5}),
    ]
    check_hand_made((8, 8, 4), (2, 2, 2), samples)


def _reference_umix_loop(images, labels, u1, u2, k, grid):
    """The authors' algorithm written with explicit Python loops over samples and patches."""
    spatial = images.shape[2:]
    psize = [s // g for s, g in zip(spatial, grid)]
    corners = list(np.ndindex(*grid))

    def region(c):
        return tuple(slice(ci * p, (ci + 1) * p) for ci, p in zip(c, psize))

    x, y = images.clone(), labels.clone()
    for b in range(images.shape[0]):
        m1 = torch.tensor([u1[b, 0][region(c)].mean() for c in corners])
        m2 = torch.tensor([u2[b, 0][region(c)].mean() for c in corners])
        o1 = torch.sort(m1, descending=True, stable=True).indices.tolist()
        o2 = torch.sort(m2, descending=True, stable=True).indices.tolist()
        for dst_order, src_order in ((o1, o2), (o2, o1)):
            dst, src = dst_order[:k], src_order[-k:]
            src_x = [x[b][(slice(None), *region(corners[s]))].clone() for s in src]
            src_y = [y[b][(slice(None), *region(corners[s]))].clone() for s in src]
            for d, sx, sy in zip(dst, src_x, src_y):
                x[b][(slice(None), *region(corners[d]))] = sx
                y[b][(slice(None), *region(corners[d]))] = sy
    return x, y


@pytest.mark.parametrize(
    "shape,grid,k",
    [((3, 1, 16, 16), (4, 4), 2), ((2, 2, 12, 8), (3, 2), 1), ((2, 1, 8, 8, 4), (2, 4, 2), 3), ((3, 1, 8, 8, 8), (4, 4, 4), 2)],
)
def test_umix_matches_looped_reference_on_random_maps(shape, grid, k):
    g = torch.Generator().manual_seed(sum(shape) + k)
    images = torch.randn(shape, generator=g)
    labels = torch.randint(0, 3, (shape[0], 1, *shape[2:]), generator=g)
    u1, u2 = torch.rand((shape[0], 1, *shape[2:]), generator=g), torch.rand((shape[0], 1, *shape[2:]), generator=g)
    got_x, got_y = umix(images, labels, u1, u2, k, grid)
    want_x, want_y = _reference_umix_loop(images, labels, u1, u2, k, grid)
    assert torch.equal(got_x, want_x) and torch.equal(got_y, want_y)
    assert not torch.equal(got_x, images)  # something did move
    # Inputs untouched (the mix works on a copy).
    assert torch.equal(images, torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape) + k)))


def test_umix_matches_authors_unfold_code_2d():
    # The authors' train.py with nn.Unfold / nn.Fold and a per-sample loop, verbatim in spirit.
    torch.manual_seed(0)
    b, c, h, w, r, k = 3, 2, 32, 32, 16, 2
    x, y = torch.randn(b, c, h, w), torch.randint(0, 2, (b, 1, h, w))
    u1, u2 = torch.rand(b, 1, h, w), torch.rand(b, 1, h, w)
    ph, pw = h // r, w // r
    unfolds = nn.Unfold(kernel_size=(ph, pw), stride=ph)
    folds = nn.Fold(output_size=(h, w), kernel_size=(ph, pw), stride=ph)

    def order(u):
        return torch.sort(unfolds(u).view(b, 1, ph, pw, -1).mean(dim=(1, 2, 3)), dim=1, descending=True).indices

    i1, i2 = order(u1), order(u2)
    img, lab = unfolds(x).view(b, c, ph, pw, -1), unfolds(y.float()).view(b, 1, ph, pw, -1)
    for i in range(b):
        img[i, ..., i1[i, :k]] = img[i, ..., i2[i, -k:]]
        img[i, ..., i2[i, :k]] = img[i, ..., i1[i, -k:]]
        lab[i, ..., i1[i, :k]] = lab[i, ..., i2[i, -k:]]
        lab[i, ..., i2[i, :k]] = lab[i, ..., i1[i, -k:]]
    want_x, want_y = folds(img.view(b, c * ph * pw, -1)), folds(lab.view(b, ph * pw, -1)).long()
    got_x, got_y = umix(x, y, u1, u2, k, r)
    assert torch.equal(got_x, want_x) and torch.equal(got_y, want_y)


def test_patches_roundtrip_and_errors():
    x = torch.randn(2, 3, 6, 8, 4)
    assert torch.equal(from_patches(to_patches(x, (3, 2, 2)), 3, (6, 8, 4), (3, 2, 2)), x)
    assert patch_shape((112, 112, 80), 8) == (14, 14, 10)
    with pytest.raises(ValueError, match=r"does not divide .* on axis 2 \(80 / 12 = 6.66"):
        patch_shape((112, 112, 80), [8, 8, 12])
    u = torch.rand(1, 1, 8, 8)
    with pytest.raises(ValueError, match="k must be in"):
        umix_moves(u, u, k=3, grid=2)  # 4 patches: at most 2 per move
    with pytest.raises(ValueError, match="u2 must be"):
        umix_moves(u, torch.rand(1, 1, 8, 4), k=1, grid=2)
    same_x, same_y = umix(x[:, :1, :, :, :], x[:, :1].long(), torch.rand(2, 1, 6, 8, 4), torch.rand(2, 6, 8, 4), 0, 2)
    assert torch.equal(same_x, x[:, :1])


# --------------------------------------------------------------------------- method pieces


class TinyNet(nn.Module):
    """A 2-class 2D net with BatchNorm (buffers) and no dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.out = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.out(torch.relu(self.bn(self.conv(x))))


def tiny_ucmt(**params) -> UCMT:
    return UCMT(TinyNet, 2, build_params(UCMTParams, params, "ucmt"))


def test_three_networks_different_initialisations_teacher_not_trained():
    torch.manual_seed(0)
    m = tiny_ucmt()
    w = [net.conv.weight for net in (m.student1, m.student2, m.teacher)]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[0], w[2]) and not torch.equal(w[1], w[2])
    trainable = {id(p) for p in m.trainable_parameters()}
    assert all(id(p) in trainable for p in m.student1.parameters())
    assert all(id(p) in trainable for p in m.student2.parameters())
    assert not any(id(p) in trainable for p in m.teacher.parameters())
    # The paper's eq. 3 option trains the teacher too.
    m3 = tiny_ucmt(teacher_supervised=True)
    assert all(p.requires_grad for p in m3.teacher.parameters())


def _set_state(m: UCMT) -> dict[str, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    for net in (m.student1, m.student2, m.teacher):
        for t in list(net.parameters()) + [net.bn.running_mean, net.bn.running_var]:
            t.data.copy_(torch.rand(t.shape, generator=g) + 0.1)
    return {
        name: [t.detach().clone() for t in list(net.parameters()) + [net.bn.running_mean]]
        for name, net in (("s1", m.student1), ("s2", m.student2), ("t", m.teacher))
    }


@pytest.mark.parametrize(
    "params,step,decay,w1",
    [
        ({"ema_weights": "paper"}, 5000, 0.999, 0.5),  # paper eq. 6: alpha 0.999, students averaged
        ({"ema_weights": "paper"}, 0, 0.0, 0.5),  # warm-up: min(1 - 1/(t+1), alpha) = 0 -> copy of the average
        ({"ema_weights": "paper"}, 3, 0.75, 0.5),  # warm-up: 1 - 1/4
        ({"ema_weights": "paper", "ema_warmup": False}, 0, 0.999, 0.5),  # literal eq. 6 from the first step
        ({}, 5000, 0.999, 0.99),  # default: alpha 0.999 (paper), students weighted 0.99 / 0.01 (code)
        ({"ema_alpha": 0.99}, 500, 0.99, 0.99),  # authors' code exactly
    ],
)
def test_teacher_update_matches_formula(params, step, decay, w1):
    m = tiny_ucmt(**params)
    before = _set_state(m)
    m.after_optimizer_step(step)
    after = [t for t in list(m.teacher.parameters()) + [m.teacher.bn.running_mean]]
    for i, got in enumerate(after):
        want = decay * before["t"][i] + (1 - decay) * (w1 * before["s1"][i] + (1 - w1) * before["s2"][i])
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_unsup_weight_ramp():
    m = tiny_ucmt(unsup_weight=0.1, rampup_epochs=5, iterations_per_epoch=20)
    assert m.unsup_weight(0, 1000) == pytest.approx(0.1 * math.exp(-5))
    assert m.unsup_weight(50, 1000) == pytest.approx(0.1 * math.exp(-5 * 0.25))
    assert m.unsup_weight(100, 1000) == pytest.approx(0.1) == m.unsup_weight(900, 1000)
    paper = tiny_ucmt(rampup_epochs=None)  # the paper's t_m = the whole run
    assert paper.unsup_weight(500, 1000) == pytest.approx(0.1 * math.exp(-5 * 0.25))


def test_training_step_is_the_two_step_ucmt_loss():
    """Recompute the iteration's loss from eqs. 3, 5, 7, 8 and UMIX and compare."""
    torch.manual_seed(0)
    m = tiny_ucmt(grid=4, k=2, rampup_epochs=None)
    m.train()
    x_l, x_u = torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16)
    y_l = (torch.rand(2, 1, 16, 16) > 0.6).long()
    out = m.training_step({"image": x_l, "label": y_l}, {"image": x_u}, step=100, max_steps=100)
    w = 0.1  # ramp complete at t = t_m

    def dice(logits, target):
        return soft_dice_loss(logits, target, include_background=True, batch=False)

    x = torch.cat([x_l, x_u])
    def parts(net, images):  # on the CPU labeled and unlabeled rows are separate forwards (separate_forwards)
        return torch.cat([net(images[:2]), net(images[2:])])

    with torch.no_grad():  # same inputs, train-mode BatchNorm: the same outputs again
        s1, s2, t = parts(m.student1, x), parts(m.student2, x), parts(m.teacher, x)
        y0 = t.argmax(1, keepdim=True)

        def step_loss(s1, s2, y_l, y0_u):
            sup = dice(s1[:2], y_l) + dice(s2[:2], y_l)
            cps = dice(s1[2:], s2[2:].argmax(1, keepdim=True)) + dice(s2[2:], s1[2:].argmax(1, keepdim=True))
            mts = dice(s1[2:], y0_u) + dice(s2[2:], y0_u)
            return sup + w * (cps + mts)

        loss1 = step_loss(s1, s2, y_l, y0[2:])
        pt = torch.softmax(t, 1)
        u1 = predictive_entropy(0.5 * (torch.softmax(s1, 1) + pt))
        u2 = predictive_entropy(0.5 * (torch.softmax(s2, 1) + pt))
        xm, ym = umix(x, torch.cat([y_l, y0[2:]]), u1, u2, 2, 4)
        loss2 = step_loss(parts(m.student1, xm), parts(m.student2, xm), ym[:2], ym[2:])
    torch.testing.assert_close(out.loss.detach(), loss1 + loss2, rtol=1e-5, atol=1e-6)
    for key in ("sup", "cps", "mts", "sup_mix", "cps_mix", "mts_mix", "unsup_weight", "uncertainty"):
        assert key in out.logs and torch.isfinite(out.logs[key])
    # Gradients reach the students only; the EMA teacher is detached.
    out.loss.backward()
    assert m.student1.conv.weight.grad is not None and m.student2.conv.weight.grad is not None
    assert m.teacher.conv.weight.grad is None


def test_training_step_without_unlabeled_and_without_umix():
    torch.manual_seed(0)
    x, y = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).long()
    out = tiny_ucmt(grid=2, k=1).training_step({"image": x, "label": y}, None, 0, 10)
    assert set(out.logs) >= {"sup", "sup_mix"} and "cps" not in out.logs
    cmt = tiny_ucmt(umix=False).training_step({"image": x, "label": y}, {"image": x}, 0, 10)
    assert "sup_mix" not in cmt.logs and "mts" in cmt.logs


def test_teacher_supervised_option_gives_teacher_gradients():
    torch.manual_seed(0)
    m = tiny_ucmt(grid=2, k=1, teacher_supervised=True)
    x, y = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).long()
    m.training_step({"image": x, "label": y}, {"image": x}, 0, 10).loss.backward()
    assert m.teacher.conv.weight.grad is not None


def test_grid_that_does_not_fit_the_patch_is_a_config_error():
    m = tiny_ucmt()  # default 2D grid 16 on a 24 x 24 patch
    x, y = torch.randn(1, 1, 24, 24), torch.zeros(1, 1, 24, 24, dtype=torch.long)
    with pytest.raises(ConfigError, match=r"method.params.grid .* data.patch_size \[24, 24\]"):
        m.training_step({"image": x, "label": y}, {"image": x}, 0, 10)


def test_bad_params_are_config_errors():
    with pytest.raises(ConfigError, match="unknown parameter"):
        tiny_ucmt(topk=2)
    with pytest.raises(ConfigError, match="ema_weights"):
        tiny_ucmt(ema_weights="students")
    with pytest.raises(ConfigError, match="prediction"):
        tiny_ucmt(prediction="student")


# --------------------------------------------------------------------------- registry, config, inference


def tiny_config(dataset: str = "", dropout: bool = False, **params) -> RunConfig:
    return RunConfig(
        data=DataConfig(dataset=dataset, patch_size=[32, 32, 16]),
        network=NetworkConfig(name="vnet", base_filters=4, dropout=dropout),
        method=MethodConfig(name="ucmt", params=params),
        train=TrainConfig(optimizer="adamw", lr=1e-3, lr_schedule="constant", weight_decay=0.01),
        inference=InferenceConfig(mc_samples=2, overlap=0.25),
    )


def test_inference_networks_and_description():
    torch.manual_seed(0)
    plain = build_method(tiny_config(), 2)
    assert isinstance(plain, UCMT)
    assert plain.inference_networks() == [plain.teacher, plain.student1, plain.student2]
    assert "disagreement" in plain.uncertainty_description()
    teacher_only = build_method(tiny_config(prediction="teacher"), 2)
    assert teacher_only.inference_networks() == [teacher_only.teacher]
    assert "mutual-information map is zero" in teacher_only.uncertainty_description()
    mc = build_method(tiny_config(dropout=True), 2)
    assert mc.inference_networks() == [mc.teacher]
    assert "MC-dropout" in mc.uncertainty_description()


def test_state_dict_roundtrip_rebuilds_the_same_method():
    torch.manual_seed(0)
    cfg = tiny_config(k=1, grid=[4, 4, 2])
    a = build_method(cfg, 3)
    b = build_method(RunConfig.from_dict(cfg.to_dict()), 3)
    b.load_state_dict(a.state_dict())
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)
    assert b.params.grid == [4, 4, 2] and b.params.k == 1


def test_2d_unet_training_step_with_default_grid():
    # 2D: default grid 16 (paper r = 16) on a 32 x 32 slice -> 2 x 2 regions.
    torch.manual_seed(0)
    cfg = tiny_config()
    cfg.data.spatial_dims, cfg.data.patch_size, cfg.network.name = 2, [32, 32], "unet2d"
    m = build_method(cfg, 3).train()
    x, y = torch.randn(2, 1, 32, 32), torch.randint(0, 3, (2, 1, 32, 32))
    out = m.training_step({"image": x, "label": y}, {"image": torch.randn(2, 1, 32, 32)}, 0, 10)
    assert torch.isfinite(out.loss) and "mts_mix" in out.logs
    out.loss.backward()


def test_selectable_from_config_overrides_and_command_line(tmp_path):
    from semisup.cli import build_parser

    base = tmp_path / "base.yaml"
    base.write_text("method: {name: uamt}\n")
    cfg = load_config(base, {"method.name": "ucmt", "method.params": "{k: 3, grid: [4, 4, 2]}"})
    assert cfg.method.name == "ucmt" and cfg.method.params == {"k": 3, "grid": [4, 4, 2]}
    assert build_parser().parse_args(["demo", "--method", "ucmt"]).method == "ucmt"


def test_la_config_loads_and_fits_the_patch():
    cfg = load_config(CONFIGS / "ucmt_la.yaml")
    assert cfg.method.name == "ucmt" and cfg.train.optimizer == "adamw" and cfg.train.lr_schedule == "constant"
    assert cfg.data.patch_size == [112, 112, 80] and cfg.network.name == "vnet"
    params = build_params(UCMTParams, cfg.method.params, "ucmt")
    assert patch_shape(cfg.data.patch_size, params.grid) == (14, 14, 10)
    assert params.ema_alpha == 0.999 and params.ema_weights == "code" and params.k == 2


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_ucmt_learns_end_to_end(tmp_path):
    """The real engine on tiny synthetic volumes: the trained teacher beats an untrained one."""
    pytest.importorskip("semisup.engine.trainer", reason="engine/data layer not importable yet")
    from semisup.data import image_to_array, preprocess_image, read_image
    from semisup.engine.trainer import Trainer
    from semisup.measure.metrics import evaluate_case
    from semisup.engine.predict import load_trained, predict_array
    from semisup.data.synthetic import make_synthetic_dataset

    dataset = make_synthetic_dataset(tmp_path / "data", labeled=3, unlabeled=3, validation=1, test=2, shape=(32, 32, 16), seed=3)
    # Teacher alone at test (paper); short ramp so the unsupervised terms act within the run.
    cfg = tiny_config(str(dataset), prediction="teacher", rampup_epochs=1, iterations_per_epoch=10)
    cfg.train.iterations, cfg.train.val_every, cfg.train.checkpoint_every, cfg.train.log_every = 40, 40, 40, 10
    cfg.train.lr = 3e-3
    events: list[dict] = []
    result = Trainer(cfg, tmp_path / "run", emit=lambda event, **f: events.append({"event": event, **f})).fit()
    assert result.iteration == 40
    losses = [e["losses"] for e in events if e["event"] == "iteration"]
    assert {"sup", "cps", "mts", "sup_mix", "mts_mix"} <= set(losses[-1])
    assert losses[-1]["sup"] < losses[0]["sup"]

    trained = load_trained(result.best_checkpoint)  # rebuilt from the checkpoint's own config
    assert isinstance(trained.method, UCMT) and trained.networks == [trained.method.teacher]
    torch.manual_seed(123)
    untrained = build_method(trained.cfg, 2).eval()

    from semisup.data import DatasetSpec

    spec = DatasetSpec.from_json(dataset)

    def test_dice(networks) -> float:
        scores = []
        for case in spec.test:
            img = read_image(case.image)
            out = predict_array(networks, preprocess_image(img, cfg.data), trained.cfg, torch.device("cpu"), mc_samples=1)
            ref = image_to_array(read_image(case.label))
            scores.append(evaluate_case(out["label"], ref, spec.num_classes, img.GetSpacing(), spec.class_names)["mean"]["dice"])
        return float(np.mean(scores))

    dice_trained, dice_untrained = test_dice(trained.networks), test_dice(untrained.inference_networks())
    assert dice_trained > dice_untrained + 0.2, (dice_trained, dice_untrained)
