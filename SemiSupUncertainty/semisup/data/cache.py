"""Preprocessed cases on disk, read back memory-mapped.

Each case is preprocessed once (:mod:`semisup.data.preprocess`) and written to the
cache folder as ``.npy``: the image float32 ``(1, *spatial)``, the label uint8
``(1, *spatial)`` and, for labeled cases, a small table of foreground voxel
positions for foreground-centred crops. Entries are keyed by a hash of the source
file (path, modification time, size) and the DataConfig fields that change the
result, so editing a file or the config makes a new entry; stale entries are left
in place (delete the folder to reclaim space).

Why not MONAI's ``PersistentDataset``: it stores each preprocessed volume with
``torch.save`` and ``torch.load``\\ s the whole volume for every sample. Here
``np.load(mmap_mode=...)`` maps the file, so a random 3D crop or one 2D slice reads
only the pages it touches, and RAM stays bounded however many unlabeled volumes
there are (the OS page cache keeps the hot ones).

Arrays are mapped copy-on-write (``mmap_mode="c"``): reads are as lazy as with
``"r"``, but an in-place write by a transform (numpy, or torch, which ignores
numpy's read-only flag and would crash on a read-only mapping) changes a private
page of that process, never the cache file.

Layout: 3D training stores C-order arrays (a box crop touches few pages); 2D
training stores Fortran-order arrays, so one z slice ``arr[..., z]`` is contiguous
on disk. The logical shape is ``(1, x, y, z)`` either way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DataConfig
from .dataset import IGNORE_INDEX, Case
from .errors import DataError
from .io import read_channels, read_channels_geometry, read_image
from .preprocess import preprocess_image, preprocess_label, preprocessed_geometry

__all__ = ["PreprocessCache", "CachedCase", "foreground_samples", "CACHE_VERSION"]

log = logging.getLogger(__name__)

#: Bump when preprocessing changes in a way the key fields do not capture.
CACHE_VERSION = 1
#: Foreground positions kept per class (nnU-Net keeps 10,000 per class, or 1 %).
MAX_FOREGROUND_SAMPLES = 10_000


@dataclass(frozen=True)
class CachedCase:
    """A preprocessed case in the cache; only paths, so it pickles to loader workers."""

    name: str
    image_file: Path
    label_file: Path | None
    foreground_file: Path | None
    spacing: tuple[float, ...]
    shape: tuple[int, ...]

    def image(self) -> np.ndarray:
        """float32 ``(1, *spatial)``, memory-mapped copy-on-write."""
        return np.load(self.image_file, mmap_mode="c")

    def label(self) -> np.ndarray | None:
        """uint8 ``(1, *spatial)``, memory-mapped copy-on-write, or ``None``."""
        return None if self.label_file is None else np.load(self.label_file, mmap_mode="c")

    def foreground(self) -> np.ndarray | None:
        """int32 ``(N, 1 + ndim)``: class value then voxel index of foreground samples."""
        return None if self.foreground_file is None else np.load(self.foreground_file)


def foreground_samples(label: np.ndarray, max_per_class: int = MAX_FOREGROUND_SAMPLES, seed: int = 0) -> np.ndarray:
    """Up to ``max_per_class`` (at least 1 %) random positions of each foreground class.

    Parameters
    ----------
    label:
        Spatial label array (no channel axis).

    Returns
    -------
    np.ndarray
        int32 ``(N, 1 + label.ndim)``: class value, then the voxel index.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for value in np.unique(label):
        if value == 0 or value == IGNORE_INDEX:  # background and unlabeled voxels are no crop centres
            continue
        locs = np.argwhere(label == value)
        keep = min(len(locs), max(max_per_class, int(np.ceil(0.01 * len(locs)))))
        if keep < len(locs):
            locs = locs[np.sort(rng.choice(len(locs), keep, replace=False))]
        rows.append(np.column_stack([np.full(len(locs), value), locs]))
    if not rows:
        return np.zeros((0, 1 + label.ndim), dtype=np.int32)
    return np.concatenate(rows).astype(np.int32)


def _stamp(path: Path) -> dict[str, Any]:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    return {"path": str(path.resolve()), "mtime_ns": st.st_mtime_ns, "size": st.st_size}


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:20]


def _save_npy(path: Path, arr: np.ndarray, order: str) -> None:
    """np.save to a temporary file in the same folder, then os.replace (atomic)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as fh:
            np.save(fh, np.asfortranarray(arr) if order == "F" else np.ascontiguousarray(arr))
        os.replace(tmp, path)
    except OSError as exc:  # a full disk: name the file (a failed write() names none)
        if exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def _save_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(obj, indent=1), encoding="utf-8")
    os.replace(tmp, path)


class PreprocessCache:
    """Preprocess-once store of cases for one :class:`DataConfig`.

    Parameters
    ----------
    cache_dir:
        Folder of the entries (created); may be shared by runs and processes.
    cfg:
        The data settings; ``modality``, ``target_spacing``, ``ct_window`` (CT) and
        ``spatial_dims`` (array layout) are part of the key.
    ignore_label:
        The dataset's ``ignore`` value, stored as ``IGNORE_INDEX`` in cached labels
        (part of the label key).

    Attributes
    ----------
    hits, misses:
        Arrays found in / written to the cache by this object.
    """

    def __init__(self, cache_dir: str | os.PathLike, cfg: DataConfig, ignore_label: int | None = None) -> None:
        self.dir = Path(cache_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cfg = cfg
        self.ignore_label = ignore_label
        self.order = "F" if cfg.spatial_dims == 2 else "C"
        self.hits = 0
        self.misses = 0

    # -- keys -----------------------------------------------------------------------
    def _settings(self) -> dict[str, Any]:
        m = self.cfg.modality
        # A single name keeps its old key form, so entries made before multi-channel inputs stay valid.
        modality: Any = m.upper() if isinstance(m, str) else [str(v).upper() for v in m]
        settings: dict[str, Any] = {
            "version": CACHE_VERSION,
            "modality": modality,
            "target_spacing": None if self.cfg.target_spacing is None else [float(v) for v in self.cfg.target_spacing],
            "order": self.order,
        }
        if "CT" in (modality if isinstance(modality, list) else [modality]):
            settings["ct_window"] = [float(v) for v in self.cfg.ct_window]
        return settings

    def image_key(self, image: Path | Case) -> str:
        if isinstance(image, Case) and image.channels:
            return _digest({"image": [_stamp(Path(f)) for f in image.files], **self._settings()})
        path = image.image if isinstance(image, Case) else image
        return _digest({"image": _stamp(Path(path)), **self._settings()})

    def label_key(self, label: Path, image_key: str) -> str:
        # The label is resampled onto its image's grid, so the image key is part of it.
        key = {"label": _stamp(Path(label)), "image_key": image_key, "version": CACHE_VERSION}
        if self.ignore_label is not None:  # absent otherwise: entries made before sparse labels stay valid
            key["ignore"] = int(self.ignore_label)
        return _digest(key)

    def _base(self, name: str, key: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80]
        return self.dir / f"{safe}.{key}"

    # -- entries --------------------------------------------------------------------
    def get(self, case: Case, with_label: bool = True) -> CachedCase:
        """The cached entry of ``case``, preprocessing it first on a miss.

        ``with_label=False`` (or a case without label) caches the image only.

        Raises
        ------
        DataError
            A file is missing or unreadable (message names it).
        """
        image_key = self.image_key(case)
        base = self._base(case.name, image_key)
        image_file, meta_file = Path(f"{base}.image.npy"), Path(f"{base}.json")
        sitk_image = None
        if image_file.is_file() and meta_file.is_file():
            self.hits += 1
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        else:
            self.misses += 1
            sitk_image = read_channels(case.files)
            arr = preprocess_image(sitk_image, self.cfg)
            grid = preprocessed_geometry(sitk_image, self.cfg.target_spacing)
            _save_npy(image_file, arr, self.order)
            meta = {"name": case.name, "source": str(case.image), "shape": list(arr.shape[1:]), **grid.to_dict()}
            _save_json(meta_file, meta)  # written last: its presence marks a complete entry
        label_file = fg_file = None
        if with_label and case.label is not None:
            lbase = self._base(case.name, self.label_key(case.label, image_key))
            label_file, fg_file = Path(f"{lbase}.label.npy"), Path(f"{lbase}.fg.npy")
            if label_file.is_file() and fg_file.is_file():
                self.hits += 1
            else:
                self.misses += 1
                reference = sitk_image if sitk_image is not None else read_channels_geometry(case.files)[0]
                try:
                    lab = preprocess_label(
                        read_image(case.label), self.cfg, reference=reference, ignore_label=self.ignore_label
                    )
                except DataError as exc:
                    if str(case.label) in str(exc):
                        raise
                    raise DataError(f"{case.label}: {exc}") from None
                _save_npy(label_file, lab, self.order)
                _save_npy(fg_file, foreground_samples(lab[0]), "C")
        return CachedCase(
            name=case.name,
            image_file=image_file,
            label_file=label_file,
            foreground_file=fg_file,
            spacing=tuple(float(v) for v in meta["spacing"]),
            shape=tuple(int(v) for v in meta["shape"]),
        )

    def prepare(
        self,
        cases: Iterable[Case],
        with_label: bool = True,
        progress: Callable[[int, int, str], None] | None = None,
    ) -> list[CachedCase]:
        """:meth:`get` for each case (in the calling process, before loader workers
        start, so workers only read)."""
        cases = list(cases)
        out = []
        for i, case in enumerate(cases, start=1):
            out.append(self.get(case, with_label=with_label))
            if progress is not None:
                progress(i, len(cases), case.name)
        log.info("cache %s: %d case(s) ready (%d hit(s), %d miss(es))", self.dir, len(out), self.hits, self.misses)
        return out
