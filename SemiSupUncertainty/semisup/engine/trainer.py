"""The iteration loop shared by every method.

One iteration: draw a labeled and an unlabeled batch, ``method.training_step``,
backward (AMP with a gradient scaler for fp16), optimizer step, learning-rate
schedule, ``method.after_optimizer_step`` (EMA). Around it: periodic validation
Dice on the held-out list, atomic ``last``/``best`` checkpoints, resume, graceful
cancel on SIGTERM/SIGINT, and progress events (docs/worker-protocol.md).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import math
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._version import __version__
from ..config import NETWORK_DIVISORS, RESUMABLE_KEYS, ConfigError, RunConfig, channel_modalities, normalisation_for_channel_name, save_config
from ..data import DataError, DatasetSpec, PreprocessCache, build_train_streams, check_dataset, load_validation_cases
from ..data.checks import count_channels
from ..data.dataset import IGNORE_INDEX
from ..data.io import orientation_code, read_channels_geometry
from ..data.label_sizes import labeled_volume_range
from ..methods import Method, build_method
from ..methods.registry import sparse_label_methods
from ..inference.predictor import largest_connected_component
from ..measure.metrics import dice_per_class, evaluate_case
from .checkpoint import CheckpointError, load_checkpoint, remove_stale_temporaries, save_checkpoint
from .device import describe_device, resolve_device, training_switches
from .distributed import init_distributed
from .memory import check_training_memory, oom_error, peak_memory_gib
from .events import Emitter, TensorBoardSink
from ..protocol.exits import CANCEL_FILE
from .runfolder import RunLock, acquire_run_lock, check_can_train

__all__ = ["Trainer", "TrainResult", "TrainingCancelled", "TrainingDiverged"]

log = logging.getLogger(__name__)


class TrainingCancelled(Exception):
    """Raised after a graceful stop; ``last.pt`` has been written."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    iteration: int
    best_dice: float
    best_checkpoint: Path | None
    last_checkpoint: Path
    seconds: float


def _rng_state() -> dict[str, Any]:
    # numpy's state holds an ndarray, which weights_only loading refuses: store a tensor.
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "python": list(random.getstate()[1]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def reproducible(deterministic: bool, threads: int | None) -> Iterator[None]:
    """Deterministic kernels and a fixed CPU thread count for the duration of a run.

    The process-wide switches are restored on exit (a front end may train twice).
    ``CUBLAS_WORKSPACE_CONFIG`` is what cuBLAS needs for deterministic matrix products
    (PyTorch's reproducibility notes); it only takes effect before CUDA starts.
    """
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    old_bench, old_cudnn_det = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    try:
        if threads:
            torch.set_num_threads(int(threads))
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            # warn_only: an op without a deterministic kernel warns instead of stopping the run.
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = old_bench, old_cudnn_det


class Trainer:
    """Train ``cfg.method`` on ``cfg.data.dataset`` into ``run_dir``.

    Parameters
    ----------
    cfg:
        The run configuration; saved to ``run_dir/config.yaml``.
    run_dir:
        The run folder (checkpoints, progress log, cache).
    emit:
        Progress events go here (JSON lines, progress bar, file).
    resume:
        Continue from ``run_dir/checkpoints/last.pt`` when it exists.
    """

    def __init__(self, cfg: RunConfig, run_dir: str | Path, emit: Emitter | None = None, resume: bool = False) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.emit = emit or Emitter()
        self.resume = resume
        self.ckpt_dir = self.run_dir / "checkpoints"
        # The stop request that needs no signal (a GUI process on Windows cannot send one).
        self.cancel_file = self.run_dir / CANCEL_FILE
        self._stop = threading.Event()
        self._prepared = False
        self._resume_from: dict[str, Any] | None = None

    # -- public -------------------------------------------------------------------
    def request_stop(self, *_: Any) -> None:
        """Finish the current iteration, write ``last.pt`` and stop (signal handler)."""
        self._stop.set()

    def prepare(self) -> RunConfig:
        """The refusals that need no data, before anything is written: a trained folder
        without ``resume``, a resume that changes what it cannot. Loads the resume state
        and returns the config the run will use; :meth:`fit` calls it when not done yet.
        """
        if not self._prepared:
            check_can_train(self.run_dir, self.resume)
            self._resume_from = self._resume_state()
            if self._resume_from is not None:
                self.cfg = self._config_for_resume(self._resume_from)
            self._prepared = True
        return self.cfg

    def fit(self) -> TrainResult:
        """Train; the run folder is locked meanwhile (engine/runfolder.py).

        Raises
        ------
        ConfigError
            The folder holds a trained run and ``resume`` is off, another process is
            training into it, or a resume changes a setting it cannot change.
        """
        # Under torchrun rank 0 alone writes the folder (RANK is set before any import).
        lock = acquire_run_lock(self.run_dir) if int(os.environ.get("RANK", "0")) == 0 else RunLock(None)
        try:
            check_can_train(self.run_dir, self.resume)  # again: the folder may have changed before the lock
            if self.ckpt_dir.is_dir():
                remove_stale_temporaries(self.ckpt_dir)  # safe: the lock is ours
            if int(os.environ.get("RANK", "0")) == 0:  # a request left by an attempt killed before it stopped; the lock is ours
                self.cancel_file.unlink(missing_ok=True)
            self.prepare()
            with reproducible(self.cfg.train.deterministic, self.cfg.train.threads):
                return self._fit()
        finally:
            lock.release()

    def _fit(self) -> TrainResult:
        cfg = self.cfg
        start_time = time.time()
        resume_state, self._resume_from = self._resume_from, None  # not kept for the whole run
        # Issue 6, DDP under torchrun (engine/distributed.py); a no-op in a single process.
        ddp = init_distributed(cfg.train.device)
        if not ddp.is_main:
            self.emit = Emitter()  # rank 0 alone reports and writes files

        spec = DatasetSpec.from_json(cfg.data.dataset)
        if resume_state is not None and list(resume_state.get("class_names", spec.class_names)) != spec.class_names:
            raise DataError(
                f"{cfg.data.dataset}: its classes {spec.class_names} differ from those the checkpoint "
                f"{self.ckpt_dir / 'last.pt'} was trained on {list(resume_state['class_names'])}"
            )
        for warning in check_dataset(spec, cfg.data.spatial_dims, target_spacing=cfg.data.target_spacing):
            log.warning(warning)
        self._resolve_channels(cfg, spec)  # saved with the config below, once every check passed
        device = ddp.resolve_device(resolve_device(cfg.train.device))
        seed_everything(cfg.train.seed)

        method = build_method(cfg, spec.num_classes).to(device)
        if spec.ignore_label is not None and not method.supports_sparse_labels:
            raise ConfigError(
                f"{spec.source}: labels declare 'ignore': {spec.ignore_label} (sparse labels), which method "
                f"{cfg.method.name!r} does not support; use one of {', '.join(sparse_label_methods())}"
            )
        _check_unlabeled(method, spec, cfg)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if ddp.is_main:  # only once every check passed: a refused start changes nothing
            save_config(cfg, self.run_dir / "config.yaml")
        tensorboard = TensorBoardSink(self.run_dir / "tensorboard") if cfg.train.tensorboard and ddp.is_main else None
        if tensorboard is not None:
            self.emit = _Tee(self.emit, tensorboard)
        # channels-last and autocast precision follow the hardware unless set (issue 19).
        deepest = math.prod(cfg.data.patch_size) // NETWORK_DIVISORS[cfg.network.name] ** cfg.data.spatial_dims
        switches = training_switches(device, cfg.train.channels_last, cfg.train.amp_cpu, amp_cuda=cfg.train.amp,
                                     deepest_voxels=deepest)
        log.info("training switches: %s", switches.reason)
        if switches.channels_last and cfg.data.spatial_dims == 3:
            method.to(memory_format=torch.channels_last_3d)
        optimizer = self._optimizer(method)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor)
        amp_dtype = switches.amp_dtype
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

        start_it, best_dice = 0, -1.0
        if resume_state is not None:
            method.load_state_dict(resume_state["method"])
            optimizer.load_state_dict(resume_state["optimizer"])
            scheduler.load_state_dict(resume_state["scheduler"])
            scaler.load_state_dict(resume_state["scaler"])
            start_it = int(resume_state["iteration"])
            best_dice = float(resume_state["best_dice"])
            _set_rng_state(resume_state["rng"])
        elif cfg.train.init_from:
            _warm_start(method, cfg, spec.num_classes, Path(cfg.train.init_from))
        # Issue 6: fail early, with settings that fit, when the step cannot fit in memory.
        memory_estimate = check_training_memory(method, cfg, spec.num_classes, device, amp_dtype)
        if ddp.enabled:  # each rank its own noise and dropout draws (and batches, below)
            seed_everything(cfg.train.seed + start_it + ddp.seed_offset())
        step_fn = ddp.wrap_step(method, device)

        cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else self.run_dir / "cache"
        # Re-seeding with the start iteration: a resumed run draws new batches, not a replay.
        with ddp.main_first():  # rank 0 fills the cache, then the other ranks read it
            context = _Context(spec, cfg, cache_dir, device, cfg.train.seed + start_it + ddp.seed_offset())
        labeled_it, _ = context.streams()
        val_cases = load_validation_cases(spec, cfg, cache_dir) if ddp.is_main else []

        total = cfg.train.iterations
        self.emit(
            "start",
            run_dir=str(self.run_dir),
            method=cfg.method.name,
            iterations=total,
            start_iteration=start_it,
            device=str(device),
            device_name=describe_device(device),
            amp=amp_dtype is not None,
            version=__version__,
            labeled_cases=len(spec.training),
            unlabeled_cases=len(spec.unlabeled),
            validation_cases=len(val_cases),
            world_size=ddp.world_size,
            memory_estimate_gib=None if memory_estimate is None else round(memory_estimate.total_gib, 3),
            init_from=cfg.train.init_from if resume_state is None else None,
        )
        meta = {
            "class_names": spec.class_names,
            "num_classes": spec.num_classes,
            "config": cfg.to_dict(),
            # Predict warns when an image's axes point elsewhere (engine/predict.py).
            "orientations": training_orientations(spec),
            # Predict flags a class far smaller or larger than any labeled one (data/label_sizes.py).
            "label_volume_ranges": labeled_volume_range(spec),
        }
        # The largest-component decision of the latest validation (stored in the checkpoints).
        self._postprocessing: dict[str, Any] | None = resume_state.get("postprocessing") if resume_state else None
        best_path = self.ckpt_dir / "best.pt"
        last_path = self.ckpt_dir / "last.pt"

        def save_last(iteration: int) -> Path:
            if not ddp.is_main:
                return last_path
            save_checkpoint(
                {
                    **meta,
                    "iteration": iteration,
                    "best_dice": best_dice,
                    "method": method.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "rng": _rng_state(),
                    **({"postprocessing": self._postprocessing} if self._postprocessing else {}),
                },
                last_path,
            )
            self.emit("checkpoint", iteration=iteration, kind="last", path=str(last_path))
            return last_path

        restore_signals = self._install_signal_handlers()
        method.train()
        timer_start, timer_it = time.time(), start_it
        it = start_it
        try:
            while it < total:
                method.on_iteration_start(it, context)
                unlabeled_it = context.unlabeled_stream() if method.uses_unlabeled else None
                labeled = _to_device(next(labeled_it), device)
                unlabeled = _to_device(next(unlabeled_it), device) if unlabeled_it is not None else None
                ctx = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
                with ctx:
                    try:
                        out = step_fn(labeled, unlabeled, it, total)
                    except ValueError as exc:
                        # torch's own words name neither the patch nor the batch that cause it.
                        if "Expected more than 1 value per channel" not in str(exc):
                            raise
                        raise ConfigError(
                            f"data.patch_size {cfg.data.patch_size} leaves one voxel per image at the deepest level of "
                            f"{cfg.network.name!r}, and with a batch of {cfg.train.labeled_batch} labeled / "
                            f"{cfg.train.unlabeled_batch} unlabeled BatchNorm gets one value per channel; use batches of 2 "
                            f"or more, or a patch of {2 * NETWORK_DIVISORS[cfg.network.name]} or more along one axis"
                        ) from None
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(out.loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                ddp.sync_buffers(method)  # identical BatchNorm statistics, hence identical EMA teachers
                method.after_optimizer_step(it)
                it += 1
                if not self._stop.is_set() and self.cancel_file.exists():
                    self._stop.set()
                stop = ddp.any_flag(self._stop.is_set())  # all ranks stop after the same iteration

                if it % cfg.train.log_every == 0 or it == total or stop:
                    loss = float(out.loss.detach())
                    if not math.isfinite(loss):
                        raise TrainingDiverged(
                            f"the loss became {loss} at iteration {it}; lower train.lr, or turn off train.amp "
                            f"(CUDA) / train.amp_cpu (CPU) if it is on; the last good checkpoint is {last_path if last_path.exists() else 'none'}"
                        )
                    elapsed = time.time() - timer_start
                    rate = (it - timer_it) / elapsed if elapsed > 0 else 0.0
                    self.emit(
                        "iteration",
                        iteration=it,
                        iterations=total,
                        loss=loss,
                        losses={k: float(v) for k, v in out.logs.items()},
                        lr=optimizer.param_groups[0]["lr"],
                        it_per_s=rate,
                        eta_seconds=(total - it) / rate if rate > 0 else None,
                        memory_gib=peak_memory_gib(device),
                    )
                if val_cases and (it % cfg.train.val_every == 0 or it == total):
                    dice, per_class = self._validate(method, val_cases, spec, device, amp_dtype)
                    method.train()
                    is_best = dice > best_dice
                    if is_best:
                        best_dice = dice
                        save_checkpoint(
                            {**meta, "iteration": it, "best_dice": dice, "method": method.state_dict(),
                             "postprocessing": self._postprocessing},
                            best_path,
                        )
                        self.emit("checkpoint", iteration=it, kind="best", path=str(best_path))
                    self.emit("validation", iteration=it, dice=dice, dice_per_class=per_class, best_dice=best_dice, is_best=is_best)
                if stop:
                    self.cancel_file.unlink(missing_ok=True)
                    save_last(it)
                    self.emit("cancelled", iteration=it, checkpoint=str(last_path))
                    raise TrainingCancelled(f"cancelled at iteration {it}")
                if it % cfg.train.checkpoint_every == 0 or it == total:
                    save_last(it)
        except torch.OutOfMemoryError as exc:
            raise oom_error(cfg, device, memory_estimate) from exc
        finally:
            restore_signals()
            if tensorboard is not None:
                tensorboard.writer.flush()

        if not val_cases and ddp.is_main:
            # Without a validation list the final model is the one to use.
            save_checkpoint({**meta, "iteration": it, "best_dice": best_dice, "method": method.state_dict()}, best_path)
        seconds = time.time() - start_time
        self.emit(
            "done",
            iteration=it,
            best_dice=best_dice if val_cases else None,
            best_checkpoint=str(best_path),
            last_checkpoint=str(last_path),
            seconds=seconds,
        )
        if tensorboard is not None:
            tensorboard.close()
        return TrainResult(it, best_dice, best_path, last_path, seconds)

    # -- helpers ------------------------------------------------------------------
    def _resume_state(self) -> dict[str, Any] | None:
        path = self.ckpt_dir / "last.pt"
        if not self.resume or not path.exists():
            return None
        return load_checkpoint(path)

    def _config_for_resume(self, state: dict[str, Any]) -> RunConfig:
        """The checkpoint's config, with the requested changes that a resume can take.

        Settings in ``config.RESUMABLE_KEYS`` (iterations, intervals, device, a moved
        dataset, inference) follow the request; a change to any other setting (method,
        network, learning rate, patch size, ...) is refused, naming each one.
        """
        source = self.ckpt_dir / "last.pt"
        saved = RunConfig.from_dict(state["config"], source=str(source)).to_dict()
        requested = self.cfg.to_dict()
        flat_saved, flat_requested = _flatten(saved), _flatten(requested)
        changed = sorted(k for k in flat_saved.keys() | flat_requested.keys() if flat_saved.get(k) != flat_requested.get(k))
        refused = [k for k in changed if not any(fnmatch.fnmatchcase(k, pattern) for pattern in RESUMABLE_KEYS)]
        if refused:
            details = "; ".join(f"{k}: {flat_saved.get(k)!r} in the checkpoint, {flat_requested.get(k)!r} requested" for k in refused)
            raise ConfigError(
                f"{source}: cannot resume with changed setting(s): {details}. A resume may change only "
                f"{', '.join(RESUMABLE_KEYS)}; for other settings train into a new run folder"
            )
        for key in changed:
            section, name = key.split(".", 1)
            saved[section][name.split(".")[0]] = requested[section][name.split(".")[0]]
            log.info("resume: %s changed from %r to %r", key, flat_saved.get(key), flat_requested.get(key))
        cfg = RunConfig.from_dict(saved, source=str(source))
        if cfg.train.iterations < int(state["iteration"]):
            raise ConfigError(
                f"{source}: train.iterations {cfg.train.iterations} is below the iteration {int(state['iteration'])} "
                "the checkpoint has reached; ask for at least as many"
            )
        return cfg

    @staticmethod
    def _resolve_channels(cfg: RunConfig, spec: DatasetSpec) -> None:
        """Input channels from the images, ``modality: auto`` from dataset.json; both saved
        with the run so prediction and export need nothing else."""
        cfg.data.channels = count_channels(spec)
        if isinstance(cfg.data.modality, str) and cfg.data.modality.upper() == "AUTO":
            names = spec.channel_names or ["MR"] * cfg.data.channels
            cfg.data.modality = [normalisation_for_channel_name(n) for n in names]
        channel_modalities(cfg.data)  # a per-channel list must match the images

    def _optimizer(self, method: Method) -> torch.optim.Optimizer:
        t = self.cfg.train
        params = list(method.trainable_parameters())
        if t.optimizer == "sgd":
            return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
        if t.optimizer == "adam":
            return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)

    def _lr_factor(self, it: int) -> float:
        t = self.cfg.train
        if t.lr_schedule == "step" and t.lr_step > 0:
            return t.lr_gamma ** (it // t.lr_step)
        if t.lr_schedule == "poly":
            return max(0.0, 1.0 - it / t.iterations) ** 0.9
        return 1.0

    def _validate(self, method, val_cases, spec, device, amp_dtype) -> tuple[float, dict[str, float]]:
        from .predict import predict_array

        method.eval()
        # Forced on (true) applies here too; "auto" is decided from these very predictions.
        fixed = list(range(1, spec.num_classes)) if self.cfg.inference.largest_component is True else []
        scores, with_lcc = [], []
        for case in val_cases:
            out = predict_array(
                method.inference_networks(),
                case["image"],
                self.cfg,
                device=device,
                mc_samples=1,
                amp=amp_dtype is not None,
                component_classes=fixed,
            )
            ref = case["label"][0]
            scores.append(
                evaluate_case(
                    out["label"], ref, spec.num_classes, case["spacing"], spec.class_names, ignore_index=IGNORE_INDEX
                )
            )
            # Largest component per class, scored on the same prediction (the "auto" decision).
            lcc = largest_connected_component(torch.from_numpy(out["label"]), spec.num_classes).numpy()
            labeled = np.asarray(ref) != IGNORE_INDEX  # sparse labels: unlabeled voxels count nowhere
            if not labeled.all():
                lcc, ref = np.where(labeled, lcc, 0), np.where(labeled, ref, 0)
            with_lcc.append(dice_per_class(lcc, ref, spec.num_classes))
        names = spec.class_names[1:]
        per_class = {name: float(np.mean([s["classes"][name]["dice"] for s in scores])) for name in names}
        plain = {c: float(np.mean([s["classes"][names[c - 1]]["dice"] for s in scores])) for c in range(1, spec.num_classes)}
        after = {c: float(np.mean([d[c] for d in with_lcc])) for c in range(1, spec.num_classes)}
        self._postprocessing = {
            # Keep a class's largest component only where it raised the mean validation Dice.
            "largest_component_classes": [c for c in plain if after[c] > plain[c]],
            "dice_without": {names[c - 1]: plain[c] for c in plain},
            "dice_with": {names[c - 1]: after[c] for c in after},
            "validation_cases": len(val_cases),
        }
        return float(np.mean(list(per_class.values()))), per_class

    def _install_signal_handlers(self):
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        # SIGBREAK: what a front end on Windows sends (CTRL_BREAK_EVENT) to ask for a stop.
        signals = [signal.SIGTERM, signal.SIGINT] + ([signal.SIGBREAK] if hasattr(signal, "SIGBREAK") else [])
        previous = {sig: signal.getsignal(sig) for sig in signals}
        for sig in previous:
            signal.signal(sig, self.request_stop)

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _check_unlabeled(method: Method, spec: DatasetSpec, cfg: RunConfig) -> None:
    """A semi-supervised method without unlabeled batches would silently train supervised."""
    if not method.uses_unlabeled:
        return
    if not spec.unlabeled:
        raise DataError(
            f"{spec.source}: method {cfg.method.name!r} learns from unlabeled images but the dataset lists none "
            "('unlabeled' is empty); add unlabeled images or use method.name: supervised"
        )
    if cfg.train.unlabeled_batch < 1:
        raise ConfigError(
            f"train.unlabeled_batch is {cfg.train.unlabeled_batch}: method {cfg.method.name!r} needs unlabeled "
            "batches (>= 1); use method.name: supervised to train without them"
        )


def training_orientations(spec: DatasetSpec) -> list[str]:
    """Orientation codes (e.g. ``"LPS"``) of the training images, from their headers."""
    codes = {orientation_code(read_channels_geometry(c.files)[0]) for c in [*spec.training, *spec.unlabeled]}
    return sorted(c for c in codes if c)


class _Context:
    """The data streams, and what a staged method may see of them (methods.base.TrainingContext)."""

    def __init__(self, spec: DatasetSpec, cfg: RunConfig, cache_dir: Path, device: torch.device, seed: int) -> None:
        self.spec, self.cfg, self.cache_dir, self.device, self.seed = spec, cfg, cache_dir, device, seed
        self._labeled, self._unlabeled = build_train_streams(spec, cfg, cache_dir, seed)
        self._subset: list[str] | None = None

    def streams(self):
        return self._labeled, self._unlabeled

    def unlabeled_stream(self):
        return self._unlabeled

    def unlabeled_cases(self):
        # The same preprocess-once cache the streams read (an entry per case, hit after the first).
        cache = PreprocessCache(self.cache_dir, self.cfg.data)
        for case in self.spec.unlabeled:
            array = cache.get(case, with_label=False).image()  # float32 (1, *spatial)
            image = torch.as_tensor(np.ascontiguousarray(array), dtype=torch.float32)[None].to(self.device)
            yield {"name": case.name, "image": image}

    def set_unlabeled_subset(self, names: list[str] | None) -> None:
        if names == self._subset:
            return
        known = {c.name for c in self.spec.unlabeled}
        unknown = set(names or []) - known
        if unknown:
            raise ValueError(f"unknown unlabeled case(s) {sorted(unknown)}")
        self._subset = None if names is None else list(names)
        wanted = known if names is None else set(names)
        subset_spec = dataclasses.replace(self.spec, unlabeled=[c for c in self.spec.unlabeled if c.name in wanted])
        _, self._unlabeled = build_train_streams(subset_spec, self.cfg, self.cache_dir, self.seed + len(wanted))


class _Tee:
    """The caller's emitter (any callable), plus one more sink."""

    def __init__(self, emit: Any, sink: Any) -> None:
        self.inner, self.sink = emit, sink

    def __call__(self, event: str, **fields: Any) -> None:
        self.inner(event, **fields)
        self.sink.emit({"event": event, **fields})


def _warm_start(method: Method, cfg: RunConfig, num_classes: int, path: Path) -> None:
    """Load the method weights of another run's checkpoint (``train.init_from``), nothing else."""
    state = load_checkpoint(path)  # weights_only=True
    try:
        saved = RunConfig.from_dict(state["config"], source=str(path))
        saved_classes = int(state["num_classes"])
    except KeyError as exc:
        raise CheckpointError(f"{path}: train.init_from: checkpoint lacks {exc}") from None
    if saved_classes != num_classes:
        raise CheckpointError(f"{path}: train.init_from: checkpoint has {saved_classes} classes, the dataset {num_classes}")
    # The weights must fit: same network and method (its schedule parameters may change).
    for what, old, new in (("network", saved.network, cfg.network), ("method.name", saved.method.name, cfg.method.name)):
        if old != new:
            raise CheckpointError(f"{path}: train.init_from: its {what} {old} differs from this run's {new}")
    try:
        method.load_state_dict(state["method"])
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: train.init_from: weights do not fit this method: {exc}") from None
    log.info("warm start from %s (iteration %s)", path, state.get("iteration"))


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    non_blocking = device.type == "cuda"
    return {k: v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v for k, v in batch.items()}
