"""Which images (and labels) a run uses: MSD-style ``dataset.json`` or plain folders.

A :class:`DatasetSpec` holds four lists of :class:`Case`: ``training`` (labeled),
``validation`` (labeled, never trained on), ``unlabeled`` and ``test``. Case names
(file name without extension) are unique across all lists; outputs, cache entries
and logs are named after them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DataError

__all__ = [
    "Case",
    "DatasetSpec",
    "IMAGE_EXTENSIONS",
    "LABEL_SUFFIXES",
    "case_name_from_path",
    "strip_extension",
]

log = logging.getLogger(__name__)

#: File endings read as images, longest first so ``.seg.nrrd`` wins over ``.nrrd``.
IMAGE_EXTENSIONS: tuple[str, ...] = (".seg.nrrd", ".nii.gz", ".nhdr", ".nrrd", ".nii", ".mha", ".mhd")
#: A label file may be named ``<case><suffix>.<ext>`` beside or instead of ``<case>.<ext>``.
LABEL_SUFFIXES: tuple[str, ...] = ("_label", "_seg")


def strip_extension(file_name: str) -> str:
    """``"la_003.nii.gz"`` -> ``"la_003"``; unknown endings lose their last suffix only."""
    lower = file_name.lower()
    for ext in IMAGE_EXTENSIONS:
        if lower.endswith(ext) and len(file_name) > len(ext):
            return file_name[: -len(ext)]
    return Path(file_name).stem or file_name


def case_name_from_path(path: str | os.PathLike) -> str:
    """The case name of an image file: its name without the image extension."""
    return strip_extension(Path(path).name)


@dataclass(frozen=True)
class Case:
    """One image, with its label map when it has one."""

    name: str
    image: Path
    label: Path | None = None

    @property
    def labeled(self) -> bool:
        return self.label is not None


@dataclass
class DatasetSpec:
    """The cases of a dataset and its class names.

    Attributes
    ----------
    root:
        Folder that relative paths were resolved against (the ``dataset.json`` folder).
    labels:
        Label value -> class name, ``0`` (background) to ``C - 1`` without gaps.
    training, validation:
        Labeled cases; validation cases are only evaluated.
    unlabeled, test:
        Cases whose labels (if any) are not used for training.
    source:
        Where the spec came from, used in error messages.
    """

    root: Path
    labels: dict[int, str]
    training: list[Case]
    validation: list[Case] = field(default_factory=list)
    unlabeled: list[Case] = field(default_factory=list)
    test: list[Case] = field(default_factory=list)
    name: str = ""
    source: str = field(default="dataset", compare=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.labels = {int(k): str(v) for k, v in self.labels.items()}
        keys = sorted(self.labels)
        if 0 not in self.labels:
            raise DataError(f"{self.source}: labels: no entry for 0 (background); got {keys}")
        if keys != list(range(len(keys))):
            raise DataError(f"{self.source}: labels: values must be 0..C-1 without gaps; got {keys}")
        if len(keys) < 2:
            raise DataError(f"{self.source}: labels: only background is listed; name at least one class")
        if not self.training:
            raise DataError(f"{self.source}: no labeled case: 'training' is empty")
        for split in ("training", "validation"):
            for i, case in enumerate(getattr(self, split)):
                if case.label is None:
                    raise DataError(
                        f"{self.source}: {split}[{i}] ({case.name}) has no label; list unlabeled images under 'unlabeled'"
                    )
        seen: dict[str, list[str]] = {}
        for split in ("training", "validation", "unlabeled", "test"):
            for i, case in enumerate(getattr(self, split)):
                seen.setdefault(case.name, []).append(f"{split}[{i}]")
        dups = {n: where for n, where in seen.items() if len(where) > 1}
        if dups:
            listed = "; ".join(f"{n!r} in {', '.join(w)}" for n, w in sorted(dups.items()))
            raise DataError(
                f"{self.source}: duplicate case name(s): {listed} (case names are file names without "
                "extension and must be unique)"
            )

    # -- properties ---------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Number of classes including background."""
        return len(self.labels)

    @property
    def class_names(self) -> list[str]:
        """Class names by label value, background first."""
        return [self.labels[i] for i in range(self.num_classes)]

    @property
    def all_cases(self) -> list[Case]:
        return [*self.training, *self.validation, *self.unlabeled, *self.test]

    # -- protocols ----------------------------------------------------------------
    def select_labeled(self, n: int) -> "DatasetSpec":
        """The semi-supervised protocol: keep the first ``n`` training cases labeled and
        move the others, without their labels, to the front of ``unlabeled``.

        LA (UA-MT): ``spec.hold_out_validation(16).select_labeled(16)``.
        """
        if not 1 <= n <= len(self.training):
            raise DataError(f"{self.source}: cannot keep {n} labeled cases out of {len(self.training)} training cases")
        freed = [Case(c.name, c.image, None) for c in self.training[n:]]
        return dataclasses.replace(self, training=list(self.training[:n]), unlabeled=[*freed, *self.unlabeled])

    def hold_out_validation(self, count: int) -> "DatasetSpec":
        """Move the last ``count`` training cases to ``validation`` (after any already there)."""
        if count < 0 or count >= len(self.training):
            raise DataError(
                f"{self.source}: cannot hold out {count} of {len(self.training)} training cases for validation "
                "(at least one must stay for training)"
            )
        if count == 0:
            return self
        keep, held = self.training[:-count], self.training[-count:]
        return dataclasses.replace(self, training=list(keep), validation=[*self.validation, *held])

    # -- dataset.json -------------------------------------------------------------
    @classmethod
    def from_json(cls, path: str | os.PathLike, check_files: bool = True) -> "DatasetSpec":
        """Read an MSD-style ``dataset.json``.

        Keys: ``labels`` ``{"0": "background", "1": ...}``; ``training``
        ``[{"image", "label"}]``; optional ``validation`` ``[{"image", "label"}]``,
        ``unlabeled`` ``[{"image"}]`` or ``[str]``, ``test`` ``[str]`` or
        ``[{"image", "label"?}]``. Relative paths are resolved against the json's folder.

        Parameters
        ----------
        check_files:
            Raise when listed files are absent (all of them named in one error).
        """
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: dataset.json not found")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_unique_keys)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: not valid JSON ({exc})") from None
        except _DuplicateKey as exc:
            raise DataError(f"{path}: key {exc.args[0]!r} appears twice in one object; JSON keeps only the last, so name it once") from None
        if not isinstance(raw, dict):
            raise DataError(f"{path}: expected a JSON object with 'labels' and 'training'")
        for key in ("labels", "training"):
            if key not in raw:
                raise DataError(f"{path}: missing key {key!r}")
        if not isinstance(raw["labels"], dict):
            raise DataError(f"{path}: 'labels' must map label values to names, e.g. {{\"0\": \"background\"}}")
        labels: dict[int, str] = {}
        for k, v in raw["labels"].items():
            try:
                value = int(k)
            except ValueError:
                raise DataError(f"{path}: labels: key {k!r} is not an integer label value") from None
            if value in labels:
                raise DataError(f"{path}: labels: label value {value} is listed twice ({k!r} and another key)")
            labels[value] = str(v)
        root = path.resolve().parent
        splits: dict[str, list[Case]] = {}
        for split, need_label in (("training", True), ("validation", True), ("unlabeled", False), ("test", False)):
            items = raw.get(split) or []
            if not isinstance(items, list):
                raise DataError(f"{path}: {split!r} must be a list")
            splits[split] = [
                _parse_entry(item, root, f"{split}[{i}]", need_label, split != "unlabeled", path)
                for i, item in enumerate(items)
            ]
        if check_files:
            missing = [
                f"{where}: {p}"
                for split, cases in splits.items()
                for i, case in enumerate(cases)
                for where, p in ((f"{split}[{i}].image", case.image), (f"{split}[{i}].label", case.label))
                if p is not None and not p.is_file()
            ]
            if missing:
                raise DataError(f"{path}: {len(missing)} listed file(s) absent:\n  " + "\n  ".join(missing))
        return cls(root=root, labels=labels, name=str(raw.get("name", "")), source=str(path), **splits)

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write an MSD-style ``dataset.json`` (atomically); paths under its folder are
        written relative (``./imagesTr/x.nrrd``), others absolute."""
        path = Path(path)
        base = path.absolute().parent

        def rel(p: Path) -> str:
            p = Path(p).absolute()
            try:
                return "./" + p.relative_to(base).as_posix()
            except ValueError:
                return str(p)

        def labeled(cases: list[Case]) -> list[dict[str, str]]:
            return [{"image": rel(c.image), "label": rel(c.label)} for c in cases if c.label is not None]

        out: dict[str, Any] = {
            "name": self.name,
            "labels": {str(k): v for k, v in sorted(self.labels.items())},
            "numTraining": len(self.training),
            "training": labeled(self.training),
            "validation": labeled(self.validation),
            "unlabeled": [{"image": rel(c.image)} for c in self.unlabeled],
            "test": [rel(c.image) if c.label is None else {"image": rel(c.image), "label": rel(c.label)} for c in self.test],
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    # -- folders ------------------------------------------------------------------
    @classmethod
    def from_folders(
        cls,
        images_dir: str | os.PathLike,
        labels_dir: str | os.PathLike,
        unlabeled_dir: str | os.PathLike | None = None,
        class_names: Sequence[str] | Mapping[int, str] | None = None,
        validation_count: int = 0,
    ) -> "DatasetSpec":
        """Pair images with label maps by file name.

        A label matches image ``<case>.<ext>`` when it is named ``<case>.<ext2>``,
        ``<case>_label.<ext2>`` or ``<case>_seg.<ext2>`` (any supported extensions).
        ``labels_dir`` may be ``images_dir`` itself. Images without a label become
        unlabeled cases, as do all images of ``unlabeled_dir``. Labeled cases are
        sorted by name and the last ``validation_count`` are held out as validation.

        Parameters
        ----------
        class_names:
            Names by label value, background first (``["background", "atrium"]``) or a
            mapping ``{0: ..., 1: ...}``. ``None`` reads the label maps and names
            classes ``"label 1"``, ... up to the largest value found.
        """
        images_dir, labels_dir = Path(images_dir).absolute(), Path(labels_dir).absolute()
        image_files = _list_images(images_dir)
        same_dir = images_dir == labels_dir
        if same_dir:
            stems = {case_name_from_path(p) for p in image_files}
            label_files = [p for p in image_files if _label_base(case_name_from_path(p), stems) is not None]
            image_files = [p for p in image_files if p not in label_files]
        else:
            label_files = _list_images(labels_dir)
        if not image_files:
            raise DataError(f"{images_dir}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
        images = {case_name_from_path(p): p for p in image_files}
        matched: dict[str, Path] = {}
        for lab in label_files:
            stem = case_name_from_path(lab)
            base = stem if stem in images and not same_dir else _label_base(stem, set(images))
            if base is None:
                raise DataError(f"{lab}: label file matches no image in {images_dir} (expected <case>, <case>_label or <case>_seg)")
            if base in matched:
                raise DataError(f"{lab}: second label file for image {images[base].name} (first: {matched[base].name})")
            matched[base] = lab
        if not matched:
            raise DataError(f"{labels_dir}: no label file matches an image of {images_dir}: no labeled case")
        labeled = [Case(n, images[n], matched[n]) for n in sorted(matched)]
        unlabeled = [Case(n, images[n]) for n in sorted(images) if n not in matched]
        if unlabeled:
            log.info("%s: %d image(s) without a label are used as unlabeled", images_dir, len(unlabeled))
        if unlabeled_dir is not None:
            unlabeled += [Case(case_name_from_path(p), p) for p in _list_images(Path(unlabeled_dir).absolute())]
        if class_names is None:
            labels = _labels_from_maps([c.label for c in labeled if c.label is not None])
        elif isinstance(class_names, Mapping):
            labels = {int(k): str(v) for k, v in class_names.items()}
        else:
            labels = dict(enumerate(class_names))
        if validation_count < 0 or validation_count >= len(labeled):
            raise DataError(
                f"{labels_dir}: cannot hold out {validation_count} of {len(labeled)} labeled cases for validation "
                "(at least one must stay for training)"
            )
        cut = len(labeled) - validation_count
        return cls(
            root=images_dir.parent,
            labels=labels,
            training=labeled[:cut],
            validation=labeled[cut:],
            unlabeled=unlabeled,
            name=images_dir.parent.name,
            source=str(images_dir),
        )


# -- helpers ------------------------------------------------------------------------
class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads`` hook: a key twice in one object is an error, not "last one wins"."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _parse_entry(item: Any, root: Path, where: str, need_label: bool, keep_label: bool, source: Path) -> Case:
    if isinstance(item, str):
        image, label = item, None
    elif isinstance(item, dict):
        if "image" not in item:
            raise DataError(f"{source}: {where} has no 'image' key")
        image, label = item["image"], item.get("label")
    else:
        raise DataError(f"{source}: {where} must be a file name or an object with 'image', got {type(item).__name__}")
    if need_label and not label:
        raise DataError(f"{source}: {where} has no 'label'; list unlabeled images under 'unlabeled'")
    for value, key in ((image, "image"), (label, "label")):
        if value is not None and not isinstance(value, str):
            raise DataError(f"{source}: {where}.{key} must be a path string, got {type(value).__name__}")
    image_path = _resolve(image, root)
    label_path = _resolve(label, root) if (label and keep_label) else None
    return Case(case_name_from_path(image_path), image_path, label_path)


def _resolve(value: str, root: Path) -> Path:
    p = Path(os.path.expanduser(value))
    return Path(os.path.normpath(p if p.is_absolute() else root / p))


def _list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(IMAGE_EXTENSIONS)
    )


def _label_base(stem: str, image_names: set[str]) -> str | None:
    """The image name a label stem refers to through a label suffix, if any."""
    for suffix in LABEL_SUFFIXES:
        if stem.endswith(suffix) and stem[: -len(suffix)] in image_names:
            return stem[: -len(suffix)]
    return None


def _labels_from_maps(paths: list[Path]) -> dict[int, str]:
    """Class names ``label 1..K`` for the largest value found in the label maps."""
    import SimpleITK as sitk

    from .io import read_image

    top = 0
    stats = sitk.MinimumMaximumImageFilter()
    for p in paths:
        stats.Execute(read_image(p))
        top = max(top, int(round(stats.GetMaximum())))
    if top < 1:
        raise DataError(f"{paths[0].parent}: the label maps contain no foreground; pass class_names")
    return {0: "background", **{i: f"label {i}" for i in range(1, top + 1)}}
