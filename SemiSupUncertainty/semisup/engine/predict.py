"""Prediction from a trained run: files in, label maps and uncertainty maps out.

Outputs are written on the input image's exact grid (origin, spacing, direction),
whatever resampling the model used, so they overlay the input in any viewer.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from .._version import __version__
from ..config import ConfigError, RunConfig
from ..data import (
    DataError,
    check_image,
    preprocess_image,
    read_channels,
    restore_label_from_probabilities,
    restore_to_reference,
    write_image,
)
from ..data.checks import check_geometry
from ..data.dataset import Case, case_name_from_path, group_inputs
from ..data.io import orientation_code, read_channels_geometry, read_metadata
from ..data.label_sizes import SIZE_CHECK_FACTOR, size_check
from .checkpoint import CheckpointError, load_checkpoint
from .device import resolve_device
from ..inference.predictor import largest_connected_component, predict_volume
from ..inference.calibration import TemperatureScaled
from ..inference.uncertainty import volume_scores
from ..methods import Method, build_method

__all__ = [
    "PROVENANCE_KEY",
    "TrainedModel",
    "largest_component_classes",
    "load_trained",
    "predict_array",
    "predict_files",
    "resolve_checkpoint",
]

#: Header field marking every image ``predict`` writes; a file without it is never replaced.
PROVENANCE_KEY = "semisup_provenance"

log = logging.getLogger(__name__)


#: Written by ``semisup calibrate`` into the run folder, beside ``checkpoints/``.
CALIBRATION_FILE = "calibration.json"


class TrainedModel:
    """A method restored from a checkpoint, with its config and class names.

    ``temperature`` is the fitted temperature scaling of the run (``calibration.json``)
    when it was fitted for this very checkpoint, else ``None``; ``calibration`` says
    which, in words, for the outputs.
    """

    def __init__(
        self,
        method: Method,
        cfg: RunConfig,
        class_names: list[str],
        checkpoint: Path,
        orientations: list[str] | None = None,
        postprocessing: dict[str, Any] | None = None,
        iteration: int | None = None,
        label_volume_ranges: dict[str, list[float]] | None = None,
    ) -> None:
        self.method = method
        self.cfg = cfg
        self.class_names = class_names
        self.checkpoint = checkpoint
        #: orientation codes of the training images (empty for checkpoints that predate them)
        self.orientations = list(orientations or [])
        # Decisions taken on the run's validation cases (largest component per class).
        self.postprocessing = postprocessing or {}
        self.iteration = iteration
        #: {class: [min_ml, max_ml]} of the labeled cases (empty: not checked; older checkpoints, sparse labels)
        self.label_volume_ranges = dict(label_volume_ranges or {})
        self.temperature: float | None = None
        self.calibration: dict[str, Any] = {"applied": False, "reason": "not looked for"}

    @property
    def networks(self) -> list[nn.Module]:
        nets = self.method.inference_networks()
        if self.temperature is None:
            return nets
        return [TemperatureScaled(n, self.temperature) for n in nets]


def resolve_checkpoint(run_dir: str | Path | None = None, checkpoint: str | Path | None = None) -> Path:
    """``checkpoint`` as given, else the run's ``best.pt``, else its ``last.pt``."""
    if checkpoint:
        return Path(checkpoint)
    if run_dir is None:
        raise CheckpointError("give a run folder or a checkpoint file")
    for name in ("best.pt", "last.pt"):
        path = Path(run_dir) / "checkpoints" / name
        if path.exists():
            return path
    raise CheckpointError(f"{run_dir}: no checkpoints/best.pt or checkpoints/last.pt: has this run been trained?")


def load_trained(path: str | Path, device: torch.device | str = "cpu", calibration: bool = True) -> TrainedModel:
    """Rebuild the method from the config stored in the checkpoint and load its weights.

    With ``calibration`` the run's ``calibration.json`` (two folders up from the
    checkpoint) is applied when it names this checkpoint and iteration.
    """
    path = Path(path)
    state = load_checkpoint(path)
    try:
        cfg = RunConfig.from_dict(state["config"], source=str(path))
        method = build_method(cfg, int(state["num_classes"]))
        method.load_state_dict(state["method"])
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: checkpoint does not match its own configuration: {exc}") from None
    device = resolve_device(device) if isinstance(device, str) else device
    method.to(device).eval()
    model = TrainedModel(
        method, cfg, list(state["class_names"]), path, state.get("orientations"), state.get("postprocessing"), state.get("iteration"),
        state.get("label_volume_ranges"),
    )
    if calibration:
        apply_calibration(model, path.parent.parent / CALIBRATION_FILE)
    else:
        model.calibration = {"applied": False, "reason": "calibration turned off"}
    return model


def apply_calibration(model: TrainedModel, file: Path) -> None:
    """Use the temperature of ``file`` when it was fitted for ``model``'s checkpoint; say why not otherwise."""
    if not file.is_file():
        model.calibration = {"applied": False, "reason": f"no {file.name} in the run folder (semisup calibrate)"}
        return
    try:
        doc = json.loads(file.read_text())
        temperature = float(doc["temperature"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{file}: not a valid calibration file ({exc})") from None
    if doc.get("checkpoint") != model.checkpoint.name or doc.get("checkpoint_iteration") != model.iteration:
        reason = (
            f"{file} was fitted for {doc.get('checkpoint')} at iteration {doc.get('checkpoint_iteration')}, "
            f"not {model.checkpoint.name} at iteration {model.iteration}: not applied; run semisup calibrate again"
        )
        log.warning(reason)
        model.calibration = {"applied": False, "reason": reason}
        return
    model.temperature = temperature
    model.calibration = {"applied": True, "temperature": temperature, "file": str(file), "fitted_on": doc.get("fitted_on")}


def largest_component_classes(cfg: RunConfig, num_classes: int, postprocessing: dict[str, Any] | None) -> list[int]:
    """Foreground classes to reduce to their largest component, from ``inference.largest_component``:
    true every class, false none, ``"auto"`` those stored with the model (chosen on its
    validation cases by the trainer; none when the checkpoint has no such decision)."""
    setting = cfg.inference.largest_component
    if setting is True:
        return list(range(1, num_classes))
    if setting == "auto":
        stored = (postprocessing or {}).get("largest_component_classes")
        if stored is None:
            log.info("largest_component 'auto': the checkpoint holds no validation decision; none applied")
            return []
        return [int(c) for c in stored]
    return []


def predict_array(
    networks: list[nn.Module],
    image: np.ndarray | torch.Tensor,
    cfg: RunConfig,
    device: torch.device,
    mc_samples: int | None = None,
    amp: bool = False,
    component_classes: list[int] | None = None,
) -> dict[str, np.ndarray]:
    """Predict a preprocessed image ``(1, *spatial)``; 2D models go slice by slice along z.

    The dropout draws are seeded with ``cfg.inference.seed`` (the same output for the
    same image and weights). ``component_classes``: classes reduced to their largest
    connected component on this grid (default none).

    Returns numpy arrays on the same grid: ``label`` (spatial), ``entropy`` and
    ``mutual_information`` (spatial, nats), ``probabilities`` (C, spatial) the MC mean,
    ``label_probabilities`` (C, spatial) those ``label`` is the argmax of
    (``cfg.inference.label_source``).
    """
    t = torch.as_tensor(np.asarray(image), dtype=torch.float32)
    flat = cfg.data.spatial_dims == 2 and t.ndim == 3  # a 2D image (e.g. an RGB photograph): one slice
    if flat:
        t = t.unsqueeze(-1)
    if cfg.data.spatial_dims == 2 and t.ndim != 4:
        raise DataError(f"a 2D model predicts 3D volumes slice by slice; got an image of shape {tuple(t.shape[1:])}")
    mc = cfg.inference.mc_samples if mc_samples is None else mc_samples
    # A 2-number ROI on a 3D image makes predict_volume go slice by slice along z.
    roi = cfg.inference.roi_size or cfg.data.patch_size
    out = predict_volume(
        networks,
        t.unsqueeze(0),
        roi,
        mc_samples=mc,
        overlap=cfg.inference.overlap,
        sw_batch_size=cfg.inference.sw_batch_size,
        device=device,
        amp=amp,
        blend_mode=cfg.inference.blend_mode,
        seed=cfg.inference.seed,
        shared_masks=cfg.inference.shared_masks,
        label_source=cfg.inference.label_source,
        flip_axes=cfg.inference.flip_axes,
    )
    label = out["label"]
    if component_classes:
        label = largest_connected_component(label, out["probabilities"].shape[1], component_classes)
    result = {
        "label": label[0, 0].cpu().numpy().astype(np.uint8),
        "entropy": out["entropy"][0, 0].float().cpu().numpy(),
        "mutual_information": out["mutual_information"][0, 0].float().cpu().numpy(),
        "probabilities": out["probabilities"][0].float().cpu().numpy(),
        "label_probabilities": out["label_probabilities"][0].float().cpu().numpy(),
    }
    return {k: v[..., 0] for k, v in result.items()} if flat else result


def predict_files(
    model: TrainedModel,
    inputs: list[str | Path],
    output_dir: str | Path,
    *,
    mc_samples: int | None = None,
    save_probabilities: bool | None = None,
    emit: Callable[..., None] | None = None,
) -> list[dict[str, Any]]:
    """Predict each input file and write ``<case>_label.nrrd``, ``<case>_uncertainty.nrrd``,
    ``<case>_mutual_information.nrrd`` (and ``<case>_probabilities.nrrd``), plus
    ``scores.csv``/``scores.json`` ranking the cases most uncertain first.

    Every image written carries the header field ``semisup_provenance``. Each input's
    header is checked before its voxels are read; an input that fails is reported
    (``warning`` event) and the others are still predicted and scored.

    Raises
    ------
    DataError
        Before anything is written: two inputs share a case name, or an output file
        exists that predict did not write. After the others: the inputs that failed.
    ConfigError
        ``mc_samples`` below 1.
    """
    emit = emit or (lambda *a, **k: None)
    out_dir = Path(output_dir)
    cfg = model.cfg
    device = next(model.method.parameters()).device
    mc = cfg.inference.mc_samples if mc_samples is None else mc_samples
    if mc < 1:
        raise ConfigError(f"--mc-samples (MC-dropout passes) must be >= 1, got {mc}")
    save_probs = cfg.inference.save_probabilities if save_probabilities is None else save_probabilities
    kinds = ["label", "uncertainty", "mutual_information"]
    kinds += [model.method.own_uncertainty_name] if model.method.own_uncertainty_name else []
    kinds += ["probabilities"] if save_probs else []
    # Refusals before anything is written: two inputs that would write the same files,
    # or a file in the way that predict did not write (ground truth named <case>_label.nrrd).
    inputs = [Path(p) for p in inputs]
    channels = int(cfg.data.channels)
    # Several channels: 4D / RGB files, or nnU-Net's <case>_0000, <case>_0001 files grouped per case.
    cases = group_inputs(inputs, channels) if channels > 1 else [Case(case_name_from_path(p), p) for p in inputs]
    names = _case_names(cases)
    _check_outputs(out_dir, names, kinds)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    components = largest_component_classes(cfg, len(model.class_names), model.postprocessing)
    settings = {
        "mc_samples": mc,
        "mc_seed": cfg.inference.seed,
        "shared_masks": cfg.inference.shared_masks,
        "blend_mode": cfg.inference.blend_mode,
        "overlap": cfg.inference.overlap,
        "label_source": cfg.inference.label_source,
        "label_restore": "argmax of linearly restored probabilities",
        "flip_axes": list(cfg.inference.flip_axes),
        "largest_component_classes": components,
        "calibration": model.calibration,
        "size_check": {"factor": SIZE_CHECK_FACTOR, "labeled_ml": model.label_volume_ranges},
    }
    emit("predict_start", cases=len(cases), mc_samples=mc, device=str(device), mc_seed=cfg.inference.seed,
         temperature=model.temperature, calibration=_calibration_words(model.calibration))
    rows: list[dict[str, Any]] = []
    failed: dict[Path, str] = {}
    try:
        for index, (case, name) in enumerate(zip(cases, names), start=1):
            path = case.image
            try:
                # The header first: a volume too large is refused before its voxels are read.
                geom, count = read_channels_geometry(case.files)
                if count != channels:
                    raise DataError(f"{path}: has {count} channel(s) but the model takes {channels}")
                check_geometry(geom, path, cfg.data.spatial_dims, target_spacing=cfg.data.target_spacing, channels=count)
                image = read_channels(case.files)  # files, DICOM folders, 4D/RGB, or one file per channel
                check_image(image, path, cfg.data.spatial_dims, target_spacing=cfg.data.target_spacing)
            except DataError as exc:  # one bad file must not cost the others their outputs
                failed[path] = str(exc)  # named again in the final error
                emit("warning", case=name, message=str(exc))
                continue
            _warn_orientation(model, geom, path, name, emit)
            rows.append(_predict_one(model, image, path, name, out_dir, mc, save_probs, device, index, len(cases), emit,
                                     components))
    finally:  # cancelled or failed midway: the cases done so far keep their scores
        csv_path = _write_scores(_ranked(rows), out_dir, _map_descriptions(model), settings) if rows else None
    emit("predict_done", cases=len(rows), scores_csv=csv_path and str(csv_path), seconds=time.time() - start, failed=[str(p) for p in failed])
    if failed:
        listed = "\n  ".join(failed.values())
        if len(cases) == 1:
            raise DataError(listed)
        raise DataError(f"{len(failed)} of {len(cases)} inputs failed; the other inputs' outputs are written:\n  {listed}")
    return rows


def _case_names(cases: list[Case]) -> list[str]:
    """Case names of the inputs; two inputs with one name would overwrite each other's outputs."""
    names = [c.name for c in cases]
    by_name: dict[str, list[Path]] = {}
    for case, name in zip(cases, names):
        by_name.setdefault(name, []).append(case.image)
    clashes = {n: ps for n, ps in by_name.items() if len(ps) > 1}
    if clashes:
        listed = "; ".join(f"{n!r}: {', '.join(map(str, ps))}" for n, ps in sorted(clashes.items()))
        raise DataError(f"inputs share a case name and would overwrite each other's outputs ({listed}); rename or predict them separately; nothing was written")
    return names


def _check_outputs(out_dir: Path, names: list[str], kinds: list[str]) -> None:
    """Refuse to replace any file predict did not write (no provenance mark in its header)."""
    foreign = [
        path
        for name in names
        for path in (out_dir / f"{name}_{kind}.nrrd" for kind in kinds)
        if path.exists() and read_metadata(path, PROVENANCE_KEY) is None
    ]
    for table, mark in (("scores.csv", "case,"), ("scores.json", '"ranking"')):
        path = out_dir / table
        if path.exists() and not path.read_text(errors="replace")[:200].lstrip("{ \n").startswith(mark):
            foreign.append(path)
    if foreign:
        shown = ", ".join(map(str, foreign[:5])) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise DataError(
            f"{shown}: would be replaced but {'was' if len(foreign) == 1 else 'were'} not written by semisup predict "
            "(ground truth?); choose another --output-dir or move the file(s); nothing was written"
        )


def _warn_orientation(model: TrainedModel, geom, path: Path, name: str, emit: Callable[..., None]) -> None:
    code = orientation_code(geom)
    if model.orientations and code and code not in model.orientations:
        message = (
            f"{path}: its axes are oriented {code} but the model was trained on {'/'.join(model.orientations)} images; "
            "a network sees voxel axes, not anatomy, so a swapped or flipped axis can give a wrong segmentation "
            "(reorient the image, e.g. with SimpleITK.DICOMOrient, to check)"
        )
        log.warning("%s", message)
        emit("warning", case=name, message=message)


def _predict_one(model, image, path, name, out_dir, mc, save_probs, device, index, total, emit, components=()) -> dict[str, Any]:
    cfg = model.cfg
    pre = preprocess_image(image, cfg.data)
    out = predict_array(model.networks, pre, cfg, device, mc_samples=mc, amp=cfg.train.amp and device.type == "cuda")
    # Argmax of the linearly restored probabilities: no staircase when the model ran at a
    # coarser spacing (docs/benchmarks.md, "Linear restore"); then post-processing.
    label = restore_label_from_probabilities(out["label_probabilities"], image)
    if components:
        label = largest_connected_component(torch.from_numpy(label), len(model.class_names), components).numpy()
    maps = {
        "uncertainty": restore_to_reference(out["entropy"][None], image)[0].astype(np.float32),
        "mutual_information": restore_to_reference(out["mutual_information"][None], image)[0].astype(np.float32),
    }
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(cfg.inference.seed)  # methods whose own map samples (reproducible too)
        own = _own_uncertainty(model, pre, device)
    if own is not None:
        maps[model.method.own_uncertainty_name] = restore_to_reference(own[None], image)[0].astype(np.float32)

    def mark(kind: str) -> dict[str, str]:
        return {PROVENANCE_KEY: f"semisup {__version__} predict: {kind} of {path.name} by {model.checkpoint.name}"}

    outputs = {"label": out_dir / f"{name}_label.nrrd"}
    write_image(label, image, outputs["label"], metadata=mark("label"))
    for kind, arr in maps.items():
        outputs[kind] = out_dir / f"{name}_{kind}.nrrd"
        write_image(arr, image, outputs[kind], metadata=mark(kind))
    if save_probs:
        probs = restore_to_reference(out["probabilities"], image).astype(np.float32)
        outputs["probabilities"] = out_dir / f"{name}_probabilities.nrrd"
        write_image(np.moveaxis(probs, 0, -1), image, outputs["probabilities"], metadata=mark("probabilities"))
    scores = volume_scores(maps["uncertainty"], label)
    scores["mean_mutual_information_image"] = float(maps["mutual_information"].mean())
    volumes, notes = size_check(label, image.GetSpacing(), model.class_names, model.label_volume_ranges)
    scores["predicted_ml"] = float(sum(volumes.values()))
    if model.label_volume_ranges:  # absent, not 0, where nothing could be checked
        scores["size_flagged"] = float(bool(notes))
    emit("predicted", index=index, total=total, case=name, outputs={k: str(v) for k, v in outputs.items()}, scores=scores)
    if notes:
        emit("warning", case=name, message=f"{path}: check this segmentation: {'; '.join(notes)}")
    row = {"case": name, "image": str(path), **{k: str(v) for k, v in outputs.items()}, **scores}
    row["size_check"] = _size_words(model, notes)
    row["temperature"] = "" if model.temperature is None else model.temperature
    return row


def _size_words(model: TrainedModel, notes: list[str]) -> str:
    if not model.label_volume_ranges:
        return "not checked: the checkpoint records no labeled sizes"
    return f"flagged: {'; '.join(notes)}" if notes else "ok"


def _calibration_words(calibration: dict[str, Any]) -> str:
    if calibration.get("applied"):
        return f"applied: temperature {calibration['temperature']:.4g} from {calibration.get('file')} ({calibration.get('fitted_on')})"
    return f"not applied: {calibration.get('reason')}"


def _ranked(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Ties keep the input order (a stable sort), so the ranking is reproducible too.
    rows = sorted(rows, key=lambda r: r["mean_uncertainty_foreground"], reverse=True)
    for rank, row in enumerate(rows, start=1):
        row["uncertainty_rank"] = rank
    return rows


def _map_descriptions(model: TrainedModel) -> dict[str, str]:
    maps = {
        "uncertainty": model.method.uncertainty_description(),
        "mutual_information": "mutual information (nats) between prediction and MC-dropout weights: the epistemic part "
        "of the uncertainty map; zero where the network has no dropout",
    }
    if model.method.own_uncertainty_name:
        maps[model.method.own_uncertainty_name] = f"the {model.method.name} method's own uncertainty (see docs/methods.md)"
    return maps


@torch.no_grad()
def _own_uncertainty(model: TrainedModel, image: np.ndarray, device: torch.device) -> np.ndarray | None:
    """The method's own map (CoraNet's uncertain region, DUST's KL, UA-DCT's disagreement)."""
    if model.method.own_uncertainty_name is None:
        return None
    x = torch.as_tensor(np.asarray(image), dtype=torch.float32)[None].to(device)
    out = model.method.own_uncertainty_map(x)
    return None if out is None else out[0, 0].float().cpu().numpy()


def _write_scores(rows: list[dict[str, Any]], out_dir: Path, maps: dict[str, str], settings: dict[str, Any]) -> Path:
    """``scores.csv`` and ``scores.json``, each written atomically (temporary file, rename)."""
    csv_path = out_dir / "scores.csv"
    fields = list(rows[0].keys()) if rows else ["case"]
    # open() rather than mkstemp: the files get the user's umask permissions, not 0600.
    tmp = out_dir / f".scores.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, csv_path)
    with open(tmp, "w") as fh:
        json.dump(
            {
                "ranking": "most uncertain first (mean entropy inside the predicted foreground)",
                "maps": maps,
                "settings": settings,
                "cases": rows,
            },
            fh,
            indent=2,
        )
    os.replace(tmp, out_dir / "scores.json")
    return csv_path
