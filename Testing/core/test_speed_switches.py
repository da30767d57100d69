"""Hardware-following speed switches (train.channels_last / train.amp_cpu "auto") and the
step changes that keep the library's step ahead of the authors' code on the CPU."""

from __future__ import annotations

import pytest
import torch

from semisup.config import ConfigError, RunConfig
from semisup.engine.device import cpu_has_native_bf16, cpu_prefers_channels_last, training_switches
from semisup.methods.losses import class_argmax
from semisup.methods.uamt import UAMT, UAMTParams, teacher_copies_per_pass
from semisup.methods.ucmt import _forward, separate_forwards
from semisup.networks.vnet import VNet

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    "capability, flags, native",
    [
        ("AVX512", {"avx512f", "avx512_bf16"}, True),  # AMD Zen 4 / Intel Cooper Lake
        ("AVX512", {"amx_tile", "amx_bf16"}, True),  # Intel Sapphire Rapids
        ("AVX512", {"avx512f", "avx512bw"}, False),  # AVX-512 without bf16 instructions
        ("AVX2", {"avx2", "avx512_bf16"}, False),  # kernels capped at AVX2 (ATEN_CPU_CAPABILITY)
        ("DEFAULT", set(), False),
    ],
)
def test_native_bf16_needs_the_instructions_and_avx512_kernels(capability, flags, native):
    assert cpu_has_native_bf16(capability, frozenset(flags)) is native


def test_auto_switches_follow_the_capability_passed_in():
    amx = training_switches(CPU, "auto", "auto", capability="AVX512", flags={"amx_bf16"})
    assert amx.channels_last and amx.amp_dtype == torch.bfloat16
    avx2 = training_switches(CPU, "auto", "auto", capability="AVX2", flags={"avx2"})
    assert avx2.channels_last and avx2.amp_dtype is None
    plain = training_switches(CPU, "auto", "auto", capability="DEFAULT", flags=set())
    assert not plain.channels_last and plain.amp_dtype is None
    assert cpu_prefers_channels_last("AVX512") and not cpu_prefers_channels_last("VSX")
    assert "AVX2" in avx2.reason and "no native bf16" in avx2.reason


def test_explicit_switches_win_over_auto():
    forced = training_switches(CPU, False, True, capability="AVX2", flags=set())
    assert not forced.channels_last and forced.amp_dtype == torch.bfloat16
    off = training_switches(CPU, True, False, capability="AVX512", flags={"avx512_bf16"})
    assert off.channels_last and off.amp_dtype is None
    with pytest.raises(ConfigError, match="train.amp_cpu"):
        training_switches(CPU, "auto", "sometimes", capability="AVX2", flags=set())


@pytest.mark.parametrize("value", ["auto", True, False])
def test_config_accepts_auto_true_false(value):
    cfg = RunConfig.from_dict({"train": {"amp_cpu": value, "channels_last": value}})
    assert cfg.train.amp_cpu == value and cfg.train.channels_last == value


def test_config_defaults_are_auto_and_bad_values_name_the_field():
    assert RunConfig().train.amp_cpu == "auto" and RunConfig().train.channels_last == "auto"
    with pytest.raises(ConfigError, match=r"train\.channels_last must be auto, true or false, got 'yes'"):
        RunConfig.from_dict({"train": {"channels_last": "yes"}}, source="run.yaml")


def test_class_argmax_hand_computed():
    # three voxels of two classes: class 1 wins, a tie (lower class), class 0 wins
    two = torch.tensor([[[1.0, 2.0, 5.0], [3.0, 2.0, -1.0]]])  # (B=1, C=2, 3 voxels)
    assert class_argmax(two).tolist() == [[1, 0, 0]]
    three = torch.tensor([[[0.0, 4.0], [2.0, 4.0], [1.0, 7.0]]])  # (1, 3, 2): class 1; tie 0/1 then 2
    assert class_argmax(three, keepdim=True).tolist() == [[[1, 2]]]
    x = torch.randn(2, 4, 5, 6, 3)
    assert torch.equal(class_argmax(x), x.argmax(dim=1))


def test_teacher_copies_per_pass_follows_the_device():
    assert teacher_copies_per_pass(None, 9, CPU) == 1
    assert teacher_copies_per_pass(None, 9, torch.device("cuda")) == 9
    assert teacher_copies_per_pass(4, 9, CPU) == 4 and teacher_copies_per_pass(20, 9, CPU) == 9
    with pytest.raises(ValueError, match="teacher_copies_per_pass"):
        teacher_copies_per_pass(0, 9, CPU)


def _uamt(copies: int | None) -> UAMT:
    torch.manual_seed(0)
    method = UAMT(lambda: VNet(1, 2, 4, dropout=False), 2, UAMTParams(mc_samples=4, teacher_copies_per_pass=copies))
    method.teacher.eval()  # eval-mode BatchNorm: each pass's batch composition cannot matter
    return method


def test_teacher_in_chunks_computes_what_one_batched_pass_does():
    x = torch.randn(2, 1, 16, 16, 16)
    results = []
    for copies in (1, 2, 5):
        method = _uamt(copies)
        torch.manual_seed(1)  # the same noise draw for every chunking
        results.append(method.teacher_predictions(x))
    for target, uncertainty in results[1:]:
        assert torch.allclose(target, results[0][0], atol=1e-6)
        assert torch.allclose(uncertainty, results[0][1], atol=1e-6)


def test_separate_forwards_follow_the_device_and_keep_the_rows():
    assert separate_forwards(None, CPU) and not separate_forwards(None, torch.device("cuda"))
    assert separate_forwards(True, torch.device("cuda")) and not separate_forwards(False, CPU)
    torch.manual_seed(0)
    net = VNet(1, 2, 4, dropout=False).eval()
    x = torch.randn(3, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.allclose(_forward(net, x, 1), net(x), atol=1e-6)
        assert torch.equal(_forward(net, x, 0), net(x))


def test_auto_bf16_stays_off_for_tiny_deepest_maps():
    # 32 x 32 x 16 V-Net patches: a 2 x 2 x 1 bottleneck, where bf16 training turned NaN
    tiny = training_switches(CPU, "auto", "auto", capability="AVX512", flags={"avx512_bf16"}, deepest_voxels=4)
    assert tiny.amp_dtype is None and "unstable" in tiny.reason
    ok = training_switches(CPU, "auto", "auto", capability="AVX512", flags={"avx512_bf16"}, deepest_voxels=18)
    assert ok.amp_dtype == torch.bfloat16
    forced = training_switches(CPU, "auto", True, capability="AVX512", flags={"avx512_bf16"}, deepest_voxels=4)
    assert forced.amp_dtype == torch.bfloat16
