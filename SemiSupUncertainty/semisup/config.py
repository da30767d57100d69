"""Typed run configuration, loaded from and saved to YAML.

A run is fully described by one :class:`RunConfig`; it is saved in the run folder
(``config.yaml``) and inside every checkpoint, so prediction and resume need no
other input.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "DataConfig",
    "NetworkConfig",
    "MethodConfig",
    "TrainConfig",
    "InferenceConfig",
    "RunConfig",
    "ConfigError",
    "NORMALISATIONS",
    "channel_modalities",
    "normalisation_for_channel_name",
    "load_config",
    "save_config",
    "apply_override",
    "RESUMABLE_KEYS",
]


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


#: Every patch size of a network must be a multiple of this (four or five 2x
#: downsamplings). Kept here, free of torch, so front ends validate configs instantly;
#: networks/factory.py checks its classes agree.
NETWORK_DIVISORS: dict[str, int] = {"vnet": 16, "unet2d": 16, "unet3d": 16}
#: Values of the hardware-dependent switches train.channels_last and train.amp_cpu.
SWITCH_VALUES: tuple[str | bool, ...] = ("auto", True, False)

#: Intensity normalisations per channel: MR z-score, CT window clip-and-scale, RGB 0..255 -> 0..1
#: (nnU-Net's ``zscore``, ``CT`` and ``rgb_to_0_1`` schemes).
NORMALISATIONS: tuple[str, ...] = ("MR", "CT", "RGB")
#: ``data.modality: auto`` takes the names from dataset.json (``modality`` or ``channel_names``).
AUTO_MODALITY = "AUTO"


def normalisation_for_channel_name(name: str) -> str:
    """The normalisation of a channel named in dataset.json, by nnU-Net's rule: ``CT``
    clip-and-scale, RGB/R/G/B (and ``rgb_to_0_1``) scaled from 0..255, everything else
    (T1, T2, FLAIR, ADC, LGE-MRI, ...) a z-score."""
    key = str(name).strip().upper()
    if key == "CT":
        return "CT"
    if key in ("RGB", "R", "G", "B", "RED", "GREEN", "BLUE", "RGB_TO_0_1"):
        return "RGB"
    return "MR"


def channel_modalities(data: "DataConfig", channels: int | None = None) -> list[str]:
    """The normalisation of each input channel (``data.channels`` of them by default).

    Raises
    ------
    ConfigError
        A per-channel list whose length is not the channel count, or an unresolved ``auto``.
    """
    n = int(data.channels if channels is None else channels)
    if isinstance(data.modality, str):
        if data.modality.upper() == AUTO_MODALITY:
            raise ConfigError("data.modality 'auto' is resolved from dataset.json when training starts")
        return [data.modality.upper()] * n
    names = [str(m).upper() for m in data.modality]
    if len(names) == 1:
        return names * n
    if len(names) != n:
        raise ConfigError(f"data.modality lists {len(names)} channel(s) {names} but the images have {n}")
    return names


@dataclass
class DataConfig:
    """Where the data is and how it is turned into network input.

    Attributes
    ----------
    dataset:
        Path of an MSD-style ``dataset.json`` (``training``, ``validation``,
        ``unlabeled``, ``test`` lists), relative paths resolved against its folder.
    modality:
        Intensity normalisation: ``"MR"`` (per-volume z-score over the whole volume, as
        UA-MT), ``"CT"`` (clip to ``ct_window`` then scale to [0, 1]) or ``"RGB"``
        (0..255 to [0, 1]), for every channel; a list gives one per channel; ``"auto"``
        takes each channel's name from dataset.json (``modality`` or ``channel_names``:
        CT -> CT, R/G/B -> RGB, anything else -> MR, nnU-Net's rule) and is saved resolved.
    channels:
        Input channels of the network; set from the data when training starts (4D
        MSD files, one file per channel, RGB images) and saved with the run.
    spatial_dims:
        3 trains on 3D patches; 2 trains slice-wise along the last image axis (z),
        for strongly anisotropic volumes such as ACDC.
    patch_size:
        Training patch in image axis order (x, y, z); two numbers when
        ``spatial_dims`` is 2. UA-MT paper: 112 x 112 x 80.
    target_spacing:
        Resample every image to this spacing (mm, x y z) before training and
        inference; ``None`` keeps the native grid.
    foreground_oversample:
        Probability that a labeled patch is centred on foreground (small structures).
    """

    dataset: str = ""
    modality: str | list[str] = "MR"
    channels: int = 1
    spatial_dims: int = 3
    patch_size: list[int] = field(default_factory=lambda: [112, 112, 80])
    target_spacing: list[float] | None = None
    ct_window: list[float] = field(default_factory=lambda: [-1000.0, 1000.0])
    foreground_oversample: float = 0.0
    # Paper augmentation (UA-MT): random 90-degree rotation in the axial plane and flips.
    augment: bool = True
    # Brightness, contrast and gamma jitter of the image (nnU-Net's defaults, data/loaders.py): for
    # cases whose structure is darker or brighter than in the labeled set (LA2018 failure analysis).
    intensity_augment: bool = False
    cache_dir: str | None = None
    num_workers: int = 0


@dataclass
class NetworkConfig:
    """Backbone: ``vnet`` (UA-MT's V-Net), ``unet3d`` (MONAI UNet) or ``unet2d`` (SSL4MIS)."""

    name: str = "vnet"
    base_filters: int = 16
    dropout: bool = True


@dataclass
class MethodConfig:
    """Semi-supervised method by registry name, with its own parameters.

    ``params`` holds the method's named constants (see each method's
    ``Params`` dataclass); anything left out takes the documented default.
    """

    name: str = "uamt"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    """The iteration loop. Defaults are the UA-MT paper's (3D LA)."""

    iterations: int = 6000
    labeled_batch: int = 2
    unlabeled_batch: int = 2
    optimizer: str = "sgd"  # "sgd" (UA-MT) or "adamw" (UCMT)
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    # "step": lr x lr_gamma every lr_step iterations (UA-MT: 0.1 every 2500);
    # "poly": lr (1 - it / iterations)^0.9 (SSL4MIS 2D); "constant" (UCMT, AdamW).
    lr_schedule: str = "step"
    lr_step: int = 2500
    lr_gamma: float = 0.1
    seed: int = 1337
    amp: bool = True  # only takes effect on CUDA
    # Perf switches, measured in docs/benchmarks.md ("Speed and memory"), each
    # "auto" (default), true or false (SWITCH_VALUES). channels-last (NDHWC) 3D
    # weights, the layout oneDNN/cuDNN convolutions are fastest in: "auto" = on with
    # CUDA and on x86 CPUs with AVX2/AVX-512 kernels. bf16 autocast on the CPU: fast
    # only with native bf16 (AMX or AVX512-BF16), emulated and slower elsewhere, so
    # "auto" = on exactly there (engine/device.py: training_switches).
    channels_last: bool | str = "auto"
    amp_cpu: bool | str = "auto"
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1"
    # Reproducible training (issue 14): deterministic kernels where PyTorch has them
    # (torch.use_deterministic_algorithms, cuDNN without autotuning). Runs are then
    # bit-identical for one seed, machine and thread count; a different thread count
    # changes the order of floating-point sums in the CPU convolutions, so fix `threads`
    # too (docs/benchmarks.md, "Reproducible training").
    deterministic: bool = False
    threads: int | None = None  # torch CPU threads for this run; None keeps the process default
    # TensorBoard event files in <run>/tensorboard beside progress.jsonl (needs the optional
    # `tensorboard` package; MONAI users look there first).
    tensorboard: bool = False
    val_every: int = 200
    checkpoint_every: int = 100
    log_every: int = 10
    # Warm start: a semisup checkpoint whose method weights (only: no optimizer, schedule
    # or iteration count) initialise this run; loaded with weights_only=True. The
    # labelling loop (simulate-labelling, the Slicer review) continues from the previous round.
    init_from: str | None = None


@dataclass
class InferenceConfig:
    """Sliding-window prediction and MC-dropout uncertainty."""

    roi_size: list[int] | None = None  # defaults to data.patch_size
    overlap: float = 0.5
    sw_batch_size: int = 2
    mc_samples: int = 8  # T stochastic passes (UA-MT: T = 8)
    save_probabilities: bool = False
    # UCMT 3D post-processing: true (every class), false, or "auto": the classes for which
    # it raised the validation Dice of the trained model (stored in the checkpoint).
    largest_component: bool | str = False
    # Reproducible MC dropout (issue 14): the seed of the dropout draws, recorded in scores.json.
    seed: int = 0
    # The same T dropout masks in every sliding window, and Gaussian importance weighting
    # of overlapping windows ("constant" is UA-MT's plain average): together they took the
    # seam statistic from 2.46 to 1.19 (1 = no seams) at the same entropy AUROC
    # (docs/benchmarks.md, "Tile seams").
    shared_masks: bool = True
    blend_mode: str = "gaussian"
    # "mc_mean" or "dropout_off": which pass the label map is the argmax of; the MC mean
    # scored higher Dice on 5 of 6 cases (docs/benchmarks.md, "Label source").
    label_source: str = "mc_mean"
    # Test-time flips along these image axes (every combination); [] for none.
    flip_axes: list[int] = field(default_factory=list)


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None, source: str = "config") -> "RunConfig":
        raw = dict(raw or {})
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = set(raw) - set(sections)
        if unknown:
            raise ConfigError(f"{source}: unknown section(s) {sorted(unknown)}; expected {sorted(sections)}")
        kwargs = {}
        for f in dataclasses.fields(cls):
            section_cls = f.default_factory().__class__  # type: ignore[misc]
            kwargs[f.name] = _build_section(section_cls, raw.get(f.name), f"{source}: {f.name}")
        cfg = cls(**kwargs)
        cfg.validate(source)
        return cfg

    def validate(self, source: str = "config") -> None:
        d, t, i = self.data, self.train, self.inference
        if d.spatial_dims not in (2, 3):
            raise ConfigError(f"{source}: data.spatial_dims must be 2 or 3, got {d.spatial_dims}")
        if len(d.patch_size) != d.spatial_dims:
            raise ConfigError(
                f"{source}: data.patch_size {d.patch_size} has {len(d.patch_size)} numbers "
                f"but data.spatial_dims is {d.spatial_dims}"
            )
        if any(int(p) < 1 for p in d.patch_size):
            raise ConfigError(f"{source}: data.patch_size must be positive, got {d.patch_size}")
        if self.network.name not in NETWORK_DIVISORS:
            raise ConfigError(f"{source}: unknown network.name {self.network.name!r}; available: {', '.join(NETWORK_DIVISORS)}")
        divisor = NETWORK_DIVISORS[self.network.name]
        if any(int(p) % divisor for p in d.patch_size):
            raise ConfigError(
                f"{source}: data.patch_size {d.patch_size} must be divisible by {divisor} for network "
                f"{self.network.name!r}; nearest: {[max(divisor, round(int(p) / divisor) * divisor) for p in d.patch_size]}"
            )
        if isinstance(d.modality, str):
            if d.modality.upper() not in (*NORMALISATIONS, AUTO_MODALITY):
                raise ConfigError(f"{source}: data.modality must be 'MR', 'CT', 'RGB' or 'auto', got {d.modality!r}")
        elif not d.modality or any(str(m).upper() not in NORMALISATIONS for m in d.modality):
            raise ConfigError(f"{source}: data.modality list must name one of MR, CT, RGB per channel, got {d.modality!r}")
        if int(d.channels) < 1:
            raise ConfigError(f"{source}: data.channels must be >= 1, got {d.channels}")
        if not 0.0 <= d.foreground_oversample <= 1.0:
            raise ConfigError(f"{source}: data.foreground_oversample must be in [0, 1]")
        for key, value, lowest in (
            ("data.num_workers", d.num_workers, 0),
            ("train.iterations", t.iterations, 1),
            ("train.labeled_batch", t.labeled_batch, 1),
            ("train.unlabeled_batch", t.unlabeled_batch, 0),
            ("train.val_every", t.val_every, 1),
            ("train.checkpoint_every", t.checkpoint_every, 1),
            ("train.log_every", t.log_every, 1),
            ("train.lr_step", t.lr_step, 0),
            ("inference.sw_batch_size", i.sw_batch_size, 1),
        ):
            if value < lowest:
                raise ConfigError(f"{source}: {key} must be >= {lowest}, got {value}")
        if not (t.lr > 0 and math.isfinite(t.lr)):
            raise ConfigError(f"{source}: train.lr must be a positive number, got {t.lr}")
        if t.threads is not None and (not isinstance(t.threads, int) or isinstance(t.threads, bool) or t.threads < 1):
            raise ConfigError(f"{source}: train.threads must be a positive integer or null, got {t.threads!r}")
        if t.optimizer not in ("sgd", "adamw", "adam"):
            raise ConfigError(f"{source}: train.optimizer must be sgd, adam or adamw, got {t.optimizer!r}")
        if t.lr_schedule not in ("step", "poly", "constant"):
            raise ConfigError(f"{source}: train.lr_schedule must be step, poly or constant, got {t.lr_schedule!r}")
        for key in ("channels_last", "amp_cpu"):
            if getattr(t, key) not in SWITCH_VALUES:
                raise ConfigError(f"{source}: train.{key} must be auto, true or false, got {getattr(t, key)!r}")
        if t.init_from is not None and not isinstance(t.init_from, str):
            raise ConfigError(f"{source}: train.init_from must be the path of a checkpoint, got {t.init_from!r}")
        if i.mc_samples < 1:
            raise ConfigError(f"{source}: inference.mc_samples must be >= 1, got {i.mc_samples}")
        if not 0.0 <= i.overlap < 1.0:
            raise ConfigError(f"{source}: inference.overlap must be in [0, 1)")
        if i.largest_component not in (True, False, "auto"):
            raise ConfigError(f"{source}: inference.largest_component must be true, false or 'auto', got {i.largest_component!r}")
        if i.blend_mode not in ("constant", "gaussian"):
            raise ConfigError(f"{source}: inference.blend_mode must be 'constant' or 'gaussian', got {i.blend_mode!r}")
        if i.label_source not in ("mc_mean", "dropout_off"):
            raise ConfigError(f"{source}: inference.label_source must be 'mc_mean' or 'dropout_off', got {i.label_source!r}")
        if not isinstance(i.seed, int) or isinstance(i.seed, bool):
            raise ConfigError(f"{source}: inference.seed must be an integer, got {i.seed!r}")
        n_axes = 3 if d.spatial_dims == 3 else 2
        if any(not isinstance(a, int) or not 0 <= a < n_axes for a in i.flip_axes):
            raise ConfigError(f"{source}: inference.flip_axes must be image axes in 0..{n_axes - 1}, got {i.flip_axes}")


def _build_section(section_cls: type, raw: Any, where: str) -> Any:
    if raw is None:
        return section_cls()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    names = {f.name for f in dataclasses.fields(section_cls)}
    unknown = set(raw) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(names)}")
    hints = typing.get_type_hints(section_cls)
    return section_cls(**{k: cast_value(v, hints[k], f"{where}.{k}") for k, v in raw.items()})


def cast_value(value: Any, annotation: Any, where: str) -> Any:
    """``value`` as the dataclass field type ``annotation``, or a :class:`ConfigError`.

    YAML 1.1 (PyYAML) reads ``1e-3`` as a string and a user may write ``500.5``
    iterations: a float field takes any number (and numeric text), an int field only
    whole numbers, a bool field only booleans, so a wrong type fails here with the
    key named rather than deep inside training.
    """
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return cast_value(value, inner[0], where) if len(inner) == 1 else value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [cast_value(v, args[0], f"{where}[{n}]") for n, v in enumerate(value)] if args else list(value)
    if origin is dict or annotation is Any:
        if origin is dict and not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected a whole number, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected text, got {value!r}")
    return value


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML config; ``overrides`` maps dotted keys (``train.iterations``) to values.

    A relative ``data.dataset`` in the file is resolved against the file's folder; one
    given as an override (``--set data.dataset=...``, typed by the user in a shell) is
    resolved against the working directory.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (data, network, method, train, inference)")
    data = raw.get("data")
    if isinstance(data, dict) and isinstance(data.get("dataset"), str) and data["dataset"]:
        data["dataset"] = _absolute(data["dataset"], path.parent)
    for key, value in (overrides or {}).items():
        apply_override(raw, key, value)
        if key == "data.dataset" and isinstance(raw["data"]["dataset"], str) and raw["data"]["dataset"]:
            raw["data"]["dataset"] = _absolute(raw["data"]["dataset"], Path.cwd())
    return RunConfig.from_dict(raw, source=str(path))


def _absolute(value: str, base: Path) -> str:
    p = Path(os.path.expanduser(value))
    return str(p if p.is_absolute() else (base / p).resolve())


#: Settings ``semisup train --resume`` may change: they do not alter the model, the
#: optimizer state or the data a checkpoint was trained on (the dataset may move).
RESUMABLE_KEYS: tuple[str, ...] = (
    "data.dataset",
    "data.cache_dir",
    "data.num_workers",
    "train.iterations",
    "train.val_every",
    "train.checkpoint_every",
    "train.log_every",
    "train.device",
    "inference.*",
)


def apply_override(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``raw[a][b] = value`` for ``dotted == "a.b"``; YAML-parses string values."""
    if isinstance(value, str):
        value = yaml.safe_load(value)
    keys = dotted.split(".")
    if len(keys) < 2 or not all(keys):
        raise ConfigError(f"override {dotted!r}: expected section.key=value, e.g. train.iterations=500")
    node = raw
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is not a section")
    node[keys[-1]] = value


def save_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
