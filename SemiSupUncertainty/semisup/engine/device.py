"""Device choice and description, and the hardware-dependent training switches."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ConfigError

__all__ = [
    "resolve_device",
    "describe_device",
    "autocast_dtype",
    "TrainingSwitches",
    "BF16_MIN_DEEPEST_VOXELS",
    "cpu_features",
    "cpu_has_native_bf16",
    "cpu_prefers_channels_last",
    "training_switches",
]

#: /proc/cpuinfo flags of native bf16 arithmetic: AMX tiles (Intel Sapphire Rapids and
#: later) or AVX512-BF16 dot products (Intel Cooper Lake, AMD Zen 4 and later).
NATIVE_BF16_FLAGS: frozenset[str] = frozenset({"amx_bf16", "avx512_bf16"})
#: ATen CPU kernels that can run the bf16 elementwise work at full vector width
#: (torch.backends.cpu.get_cpu_capability()); below AVX-512 it is converted lane by lane.
BF16_CAPABILITIES: frozenset[str] = frozenset({"AVX512", "AMX"})
#: Fewest voxels per sample in the network's deepest feature map for "auto" bf16.
#: Measured on a V-Net, 10 random initialisations each, batch 2 and 4: at 2 x 2 x 1
#: (32 x 32 x 16 patches) 9 of 20 bf16 backward passes gave weight gradients of 1e3
#: to 1e35 (UCMT training turned NaN within 20 steps); at 3 x 3 x 2 (48 x 48 x 32,
#: 18 voxels) and 4 x 4 x 2 (64 x 64 x 32) none did (docs/benchmarks.md).
BF16_MIN_DEEPEST_VOXELS: int = 16
#: Capabilities of x86 CPUs whose oneDNN convolutions run fastest in NDHWC; measured
#: 1.3x to 1.6x per UA-MT/UCMT step on an AVX-512 CPU (docs/benchmarks.md).
CHANNELS_LAST_CAPABILITIES: frozenset[str] = frozenset({"AVX2", "AVX512", "AMX"})


def resolve_device(name: str) -> torch.device:
    """``"auto"`` takes the first CUDA GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {name!r} asked for but this torch ({torch.__version__}) sees no CUDA GPU; "
            "use device 'auto' or 'cpu', or install a CUDA build of torch"
        )
    return device


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.1f} GiB)"
    return f"CPU ({torch.get_num_threads()} threads)"


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU supports it (no loss scaling needed), else fp16; none on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@dataclass(frozen=True)
class TrainingSwitches:
    """What ``train.channels_last`` / ``train.amp_cpu`` (or ``train.amp``) resolve to on a device."""

    channels_last: bool
    amp_dtype: torch.dtype | None
    reason: str


@functools.lru_cache(maxsize=1)
def cpu_features() -> tuple[str, frozenset[str]]:
    """This CPU's ATen capability and its feature flags.

    Flags come from ``/proc/cpuinfo`` (Linux) and from torch's own cpuinfo queries
    (every platform), so a flag either source reports counts.
    """
    capability = torch.backends.cpu.get_cpu_capability()
    flags: set[str] = set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                flags.update(line.split(":", 1)[1].split())
                break
    probes = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported"}
    for flag, probe in probes.items():
        fn = getattr(torch.cpu, probe, None)
        if fn is not None and fn():
            flags.add(flag)
    return capability, frozenset(flags)


def cpu_has_native_bf16(capability: str, flags: frozenset[str] | set[str]) -> bool:
    """Native bf16 matrix arithmetic (AMX or AVX512-BF16) with AVX-512-class ATen kernels."""
    return capability.upper() in BF16_CAPABILITIES and bool(NATIVE_BF16_FLAGS & set(flags))


def cpu_prefers_channels_last(capability: str) -> bool:
    """x86 CPUs with AVX2 or better (oneDNN's NDHWC convolutions); off elsewhere (not measured)."""
    return capability.upper() in CHANNELS_LAST_CAPABILITIES


def _switch(value: bool | str, auto: bool, key: str) -> bool:
    if value == "auto":
        return auto
    if isinstance(value, bool):
        return value
    raise ConfigError(f"train.{key} must be auto, true or false, got {value!r}")


def training_switches(
    device: torch.device,
    channels_last: bool | str,
    amp_cpu: bool | str,
    amp_cuda: bool = True,
    capability: str | None = None,
    flags: frozenset[str] | set[str] | None = None,
    deepest_voxels: int | None = None,
) -> TrainingSwitches:
    """Resolve ``train.channels_last`` and the autocast precision for ``device``.

    ``"auto"`` follows the hardware: on the CPU, bf16 autocast where
    :func:`cpu_has_native_bf16` and channels-last where
    :func:`cpu_prefers_channels_last`; with CUDA, channels-last on and ``train.amp``
    (``amp_cuda``) deciding the precision (:func:`autocast_dtype`). ``capability``
    and ``flags`` default to this machine's (:func:`cpu_features`); tests pass them.
    ``deepest_voxels`` (voxels per sample of the deepest feature map), when given,
    keeps "auto" bf16 off below :data:`BF16_MIN_DEEPEST_VOXELS`.
    """
    if device.type == "cuda":
        cl = _switch(channels_last, True, "channels_last")
        dtype = autocast_dtype(device) if amp_cuda else None
        return TrainingSwitches(cl, dtype, f"CUDA: channels_last {cl}, amp {dtype}")
    if capability is None or flags is None:
        capability, flags = cpu_features()
    native = cpu_has_native_bf16(capability, flags)
    too_small = deepest_voxels is not None and deepest_voxels < BF16_MIN_DEEPEST_VOXELS
    cl = _switch(channels_last, cpu_prefers_channels_last(capability), "channels_last")
    bf16 = _switch(amp_cpu, native and not too_small, "amp_cpu")
    found = sorted(NATIVE_BF16_FLAGS & set(flags)) or ["no native bf16"]
    reason = f"CPU capability {capability}, {'/'.join(found)}: channels_last {cl}, bf16 autocast {bf16}"
    if too_small and native and amp_cpu == "auto":
        reason += f" (deepest feature map {deepest_voxels} voxels < {BF16_MIN_DEEPEST_VOXELS}: bf16 unstable)"
    return TrainingSwitches(cl, torch.bfloat16 if bf16 else None, reason)
