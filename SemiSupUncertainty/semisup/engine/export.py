"""A trained run as files other tools load: TorchScript, a MONAI bundle, ONNX.

Every export holds the run's deterministic prediction network (dropout off): the
method's inference networks in eval mode, their softmax averaged (one network for
most methods, a pair for co-training ones). Input ``(B, C, *roi)`` float32 after the
run's preprocessing; output ``(B, num_classes, *roi)`` class probabilities. Patch-wise,
so a sliding window (MONAI's ``SlidingWindowInferer`` with the run's ROI, overlap and
blending, ``inference.blend_mode``) gives the library's prediction with
``--mc-samples 1`` (test-time flips, ``inference.flip_axes``, are left out). The
MC-dropout uncertainty maps need the library (``semisup predict``).

- ``torchscript``: ``torch.jit.trace`` of that network, one ``.ts`` file that
  ``torch.jit.load`` runs with PyTorch alone.
- ``bundle``: a MONAI bundle folder (``configs/metadata.json`` describing input and
  output, ``configs/inference.json``: load, the run's preprocessing as MONAI
  transforms, sliding-window inference, argmax, save; ``models/model.ts``), run with
  ``python -m monai.bundle run --config_file configs/inference.json``.
- ``onnx``: the same network through PyTorch's TorchScript-based ONNX exporter
  (needs the ``onnx`` package), batch axis dynamic; checked with ``onnxruntime``
  when it is installed.

Bundle preprocessing and the library's: identical without ``data.target_spacing``
(load, channel first, per-channel normalisation). With it, the bundle resamples with
MONAI's ``Spacingd`` (and ``Invertd`` back), whose grid may differ from the
library's extent-preserving one by a voxel at the border: predictions then agree up
to that resampling, not voxel for voxel.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .._version import __version__
from ..config import RunConfig, channel_modalities
from .checkpoint import CheckpointError
from .predict import TrainedModel, largest_component_classes

__all__ = ["EXPORT_FORMATS", "ExportError", "ExportedNetwork", "export_model", "export_torchscript", "export_onnx", "export_bundle"]

log = logging.getLogger(__name__)

EXPORT_FORMATS = ("torchscript", "bundle", "onnx")
#: ONNX opset: 17 has every operator of the networks here and is read by onnxruntime >= 1.11.
ONNX_OPSET = 17
#: Largest difference between the traced/exported network and the eager one on a check input
#: (float32 probabilities; reordered convolutions differ by ~1e-6).
EXPORT_TOLERANCE = 1e-4
#: File patterns the bundle's ``datalist`` picks up in ``dataset_dir`` (override ``datalist`` for others).
BUNDLE_IMAGE_PATTERNS = ["*.nii.gz", "*.nii", "*.nrrd", "*.png", "*.jpg", "*.bmp"]


class ExportError(CheckpointError):
    """The network does not export cleanly, or the export tool is missing."""


class ExportedNetwork(nn.Module):
    """The inference networks of a method, softmax averaged with equal weight (eval mode)."""

    def __init__(self, networks: list[nn.Module]) -> None:
        super().__init__()
        self.nets = nn.ModuleList(networks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = [torch.softmax(net(x).float(), dim=1) for net in self.nets]
        return torch.stack(probs).mean(dim=0)


def _roi(cfg: RunConfig) -> list[int]:
    return [int(v) for v in (cfg.inference.roi_size or cfg.data.patch_size)]


def _network(model: TrainedModel) -> tuple[ExportedNetwork, torch.Tensor]:
    """The export network on the CPU (contiguous weights) and an example window."""
    nets = []
    for net in model.networks:
        net = net.to("cpu", memory_format=torch.contiguous_format) if model.cfg.data.spatial_dims == 3 else net.to("cpu")
        nets.append(net.eval())
    wrapper = ExportedNetwork(nets).eval()
    example = torch.randn(1, int(model.cfg.data.channels), *_roi(model.cfg), generator=torch.Generator().manual_seed(0))
    return wrapper, example


def _check_close(reference: torch.Tensor, other: np.ndarray | torch.Tensor, what: str) -> None:
    diff = float((reference - torch.as_tensor(np.asarray(other))).abs().max())
    if not diff <= EXPORT_TOLERANCE:
        raise ExportError(f"{what} differs from the library's network by {diff:.3g} (tolerance {EXPORT_TOLERANCE})")


def _atomic_target(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@torch.no_grad()
def export_torchscript(model: TrainedModel, path: str | Path) -> Path:
    """``torch.jit.trace`` of the prediction network to ``path``, checked on a batch of two.

    Raises
    ------
    ExportError
        The traced network's output differs from the eager one (shape-dependent code).
    """
    path = Path(path)
    wrapper, example = _network(model)
    with warnings.catch_warnings():
        # The networks' input checks are Python conditions on shapes: traced as constants, as intended.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(wrapper, example, check_trace=False)
    batch = torch.cat([example, -example])  # another batch size than traced
    _check_close(wrapper(batch), traced(batch), "the TorchScript network")
    tmp = _atomic_target(path)
    try:
        torch.jit.save(traced, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@torch.no_grad()
def export_onnx(model: TrainedModel, path: str | Path) -> Path:
    """ONNX (opset :data:`ONNX_OPSET`, dynamic batch) of the prediction network; checked with
    onnxruntime when it is installed.

    Raises
    ------
    ExportError
        ``onnx`` is not installed, the exporter fails on the network, or onnxruntime's
        output differs from PyTorch's.
    """
    path = Path(path)
    try:
        import onnx  # noqa: F401  (the exporter needs it to serialise)
    except ImportError:
        raise ExportError("ONNX export needs the 'onnx' package: pip install onnx onnxruntime") from None
    wrapper, example = _network(model)
    tmp = _atomic_target(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based exporter (no onnxscript needed)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                wrapper,
                (example,),
                str(tmp),
                input_names=["image"],
                output_names=["probabilities"],
                dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}},
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
        try:
            import onnxruntime as ort
        except ImportError:
            log.warning("onnxruntime is not installed: %s is not checked against PyTorch", path)
        else:
            session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
            batch = torch.cat([example, -example])
            _check_close(wrapper(batch), session.run(None, {"image": batch.numpy()})[0], "the ONNX network")
        os.replace(tmp, path)
    except ExportError:
        raise
    except Exception as exc:  # the exporter's own errors: name the network and the reason
        raise ExportError(f"{type(wrapper.nets[0]).__name__} does not export to ONNX: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


# -- MONAI bundle ---------------------------------------------------------------------
def _normalisation(modality: str, key: str, cfg: RunConfig) -> dict[str, Any]:
    """The MONAI transform of :func:`semisup.data.preprocess.normalize_intensity` for one channel group."""
    if modality == "CT":
        lo, hi = (float(v) for v in cfg.data.ct_window)
        return {"_target_": "ScaleIntensityRanged", "keys": key, "a_min": lo, "a_max": hi, "b_min": 0.0, "b_max": 1.0, "clip": True}
    if modality == "RGB":
        from ..data.preprocess import RGB_MAX

        return {"_target_": "ScaleIntensityRanged", "keys": key, "a_min": 0.0, "a_max": RGB_MAX, "b_min": 0.0, "b_max": 1.0}
    return {"_target_": "NormalizeIntensityd", "keys": key, "nonzero": False, "channel_wise": True}


def _preprocessing(cfg: RunConfig) -> list[dict[str, Any]]:
    transforms: list[dict[str, Any]] = [
        {"_target_": "LoadImaged", "keys": "image", "image_only": True},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
    ]
    if cfg.data.target_spacing is not None:
        spacing = [float(v) for v in cfg.data.target_spacing]
        transforms.append({"_target_": "Spacingd", "keys": "image", "pixdim": spacing, "mode": "bilinear"})
    transforms.append({"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"})
    modalities = channel_modalities(cfg.data)
    if len(set(modalities)) == 1:
        transforms.append(_normalisation(modalities[0], "image", cfg))
    else:  # one transform per channel: split, normalise, concatenate
        keys = [f"image_{c}" for c in range(len(modalities))]
        transforms.append(
            {"_target_": "SplitDimd", "keys": "image", "dim": 0, "keepdim": True,
             "output_postfixes": [str(c) for c in range(len(modalities))], "update_meta": False}
        )
        transforms += [_normalisation(m, k, cfg) for m, k in zip(modalities, keys)]
        transforms.append({"_target_": "ConcatItemsd", "keys": keys, "name": "image", "dim": 0})
        transforms.append({"_target_": "DeleteItemsd", "keys": keys})
    return transforms


def _inferer(cfg: RunConfig, slice_wise: bool) -> dict[str, Any]:
    common = {
        "sw_batch_size": int(cfg.inference.sw_batch_size),
        "overlap": float(cfg.inference.overlap),
        "mode": cfg.inference.blend_mode,  # the library's blending of overlapping windows
        "padding_mode": "constant",
        "cval": 0.0,
    }
    roi = _roi(cfg)
    if slice_wise:
        # A 2D network slice by slice along z (the library's 2D prediction of a volume).
        return {"_target_": "SliceInferer", "roi_size": roi, "spatial_dim": 2, **common}
    return {"_target_": "SlidingWindowInferer", "roi_size": roi, **common}


def _inference_config(cfg: RunConfig, component_classes: list[int], volume_3d: bool) -> dict[str, Any]:
    preprocessing = _preprocessing(cfg)
    post: list[dict[str, Any]] = [{"_target_": "AsDiscreted", "keys": "pred", "argmax": True}]
    if component_classes:  # inference.largest_component as the library resolves it
        post.append({"_target_": "KeepLargestConnectedComponentd", "keys": "pred",
                     "applied_labels": [int(c) for c in component_classes], "independent": True})
    if cfg.data.target_spacing is not None:
        post.append({"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
                     "nearest_interp": True, "to_tensor": True})
    writer = "NibabelWriter" if volume_3d else "PILWriter"
    post.append({"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
                 "output_dtype": "$numpy.uint8", "resample": False, "separate_folder": False,
                 "output_ext": ".nii.gz" if volume_3d else ".png", "writer": writer})
    return {
        "imports": ["$import glob", "$import os", "$import numpy", "$import torch"],
        "bundle_root": ".",
        "dataset_dir": "$@bundle_root + '/data'",
        "output_dir": "$@bundle_root + '/eval'",
        "image_patterns": BUNDLE_IMAGE_PATTERNS,
        "datalist": "$sorted(f for p in @image_patterns for f in glob.glob(os.path.join(@dataset_dir, p)))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": "$torch.jit.load(os.path.join(@bundle_root, 'models', 'model.ts'), map_location=@device)",
        "network": "$@network_def.eval()",
        "preprocessing": {"_target_": "Compose", "transforms": preprocessing},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': f} for f in @datalist]", "transform": "@preprocessing"},
        "inferer": _inferer(cfg, False),
        "slice_inferer": _inferer(cfg, True) if cfg.data.spatial_dims == 2 else None,
        "postprocessing": {"_target_": "Compose", "transforms": post},
        # No ignite engine: a plain loop, so the bundle runs with MONAI and PyTorch only.
        "predict": "$lambda d: @postprocessing(dict(d, pred=@select_inferer(d)(d['image'][None].to(@device), @network)[0].cpu()))",
        # 2D networks: a volume (C, x, y, z) goes slice by slice, a 2D image through the plain window.
        "select_inferer": "$lambda d: @slice_inferer if d['image'].ndim == 4 and @slice_inferer is not None else @inferer",
        "initialize": ["$torch.set_grad_enabled(False)", "$os.makedirs(@output_dir, exist_ok=True)"],
        "run": ["$[@predict(d) for d in @dataset]"],
    }


def _metadata(model: TrainedModel, volume_3d: bool) -> dict[str, Any]:
    import monai

    cfg = model.cfg
    roi = _roi(cfg)
    modalities = channel_modalities(cfg.data)
    channels = int(cfg.data.channels)
    classes = {str(i): name for i, name in enumerate(model.class_names)}
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": "0.1.0",
        "changelog": {"0.1.0": f"exported by semisup {__version__} from {model.checkpoint.name}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {"nibabel": "", "fire": ""},
        "name": f"semisup {cfg.method.name} {cfg.network.name}",
        "task": "segmentation",
        "description": (
            f"{cfg.method.name} ({cfg.network.name}) trained with semisup {__version__}; deterministic prediction "
            "(dropout off), softmax averaged over the method's inference networks"
        ),
        "authors": "semisup export",
        "copyright": "the run's owner",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": ",".join(modalities),
                    "num_channels": channels,
                    "spatial_shape": roi,
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": True,
                    "channel_def": {str(i): m for i, m in enumerate(modalities)},
                }
            },
            "outputs": {
                "pred": {
                    "type": "probabilities",
                    "format": "segmentation",
                    "num_channels": len(model.class_names),
                    "spatial_shape": roi,
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": True,
                    "channel_def": classes,
                }
            },
        },
        "semisup": {
            "spatial_dims": int(cfg.data.spatial_dims),
            "input": "3D volumes" if volume_3d else "2D images",
            "target_spacing": cfg.data.target_spacing,
            "modality": modalities,
            "ct_window": [float(v) for v in cfg.data.ct_window],
            "class_names": model.class_names,
        },
    }


def export_bundle(model: TrainedModel, folder: str | Path) -> Path:
    """A MONAI bundle folder: ``configs/metadata.json``, ``configs/inference.json``,
    ``models/model.ts`` and ``docs/README.md``. Written into a temporary folder and
    renamed, so a half-written bundle never appears under ``folder``.

    Raises
    ------
    ExportError
        ``folder`` exists and is not empty, or the network does not trace cleanly.
    """
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise ExportError(f"{folder}: exists and is not empty; choose a new bundle folder")
    # Outputs as NIfTI, except for 2D RGB models, which take photographs (PNG out).
    volume_3d = not (model.cfg.data.spatial_dims == 2 and int(model.cfg.data.channels) == 3)
    components = largest_component_classes(model.cfg, len(model.class_names), model.postprocessing)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        export_torchscript(model, tmp / "models" / "model.ts")
        (tmp / "configs").mkdir(parents=True)
        (tmp / "configs" / "inference.json").write_text(
            json.dumps(_inference_config(model.cfg, components, volume_3d), indent=2) + "\n"
        )
        (tmp / "configs" / "metadata.json").write_text(json.dumps(_metadata(model, volume_3d), indent=2) + "\n")
        (tmp / "docs").mkdir()
        (tmp / "docs" / "README.md").write_text(_readme(model, volume_3d))
        if folder.exists():
            folder.rmdir()
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _readme(model: TrainedModel, volume_3d: bool) -> str:
    kind = "3D volumes (NIfTI, NRRD)" if volume_3d else "2D images (PNG, JPG, BMP)"
    return (
        f"# semisup {model.cfg.method.name} ({model.cfg.network.name})\n\n"
        f"Segments {kind} into {', '.join(model.class_names)}.\n\n"
        "Run from this folder:\n\n"
        "    python -m monai.bundle run --config_file configs/inference.json "
        "--dataset_dir /path/to/images --output_dir /path/to/output\n\n"
        "Needs PyTorch, MONAI, fire and nibabel. Outputs `<image>_seg` label maps on the input grids. "
        "The MC-dropout uncertainty maps need the semisup library (`semisup predict`).\n"
    )


def export_model(model: TrainedModel, fmt: str, output: str | Path) -> Path:
    """Export ``model`` as ``fmt`` (one of :data:`EXPORT_FORMATS`) to ``output``."""
    if fmt == "torchscript":
        return export_torchscript(model, output)
    if fmt == "onnx":
        return export_onnx(model, output)
    if fmt == "bundle":
        return export_bundle(model, output)
    raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
