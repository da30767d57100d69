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
    "IGNORE_INDEX",
    "group_inputs",
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
#: The value every declared ``ignore`` label is mapped to on the preprocessed grid (the
#: cache, the batches, the losses and the metrics): the largest uint8, so it never
#: collides with a class value and ``F.cross_entropy(ignore_index=...)`` takes it.
IGNORE_INDEX = 255
#: Name of the label entry that declares the ignore value (nnU-Net v2 ``dataset.json``).
IGNORE_KEY = "ignore"
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
    """One image, with its label map when it has one.

    ``image`` is the (first) image file; ``channels`` the files of further channels
    when each channel is its own file (nnU-Net's ``case_0000``, ``case_0001``, ...).
    """

    name: str
    image: Path
    label: Path | None = None
    channels: tuple[Path, ...] = ()

    @property
    def labeled(self) -> bool:
        return self.label is not None

    @property
    def files(self) -> list[Path]:
        """Every image file of the case, channel order."""
        return [self.image, *self.channels]


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
    ignore_label:
        The label value of voxels nobody labeled (``"ignore": N`` in ``labels``, as
        nnU-Net v2 declares it): excluded from the supervised losses and the metrics.
        Must be above every class value (nnU-Net v2's rule) and at most 255.
    channel_names:
        Input channel names by index (``modality`` of MSD, ``channel_names`` of
        nnU-Net v2), empty when the dataset does not say.
    """

    root: Path
    labels: dict[int, str]
    training: list[Case]
    validation: list[Case] = field(default_factory=list)
    unlabeled: list[Case] = field(default_factory=list)
    test: list[Case] = field(default_factory=list)
    name: str = ""
    source: str = field(default="dataset", compare=False)
    ignore_label: int | None = None
    channel_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.labels = {int(k): str(v) for k, v in self.labels.items()}
        keys = sorted(self.labels)
        if self.ignore_label is not None:
            self.ignore_label = int(self.ignore_label)
            if not keys or not max(keys) < self.ignore_label <= IGNORE_INDEX:
                raise DataError(
                    f"{self.source}: labels: 'ignore' is {self.ignore_label}; it must be above every class value "
                    f"(largest {max(keys) if keys else 'none'}) and at most {IGNORE_INDEX}"
                )
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
        freed = [Case(c.name, c.image, None, c.channels) for c in self.training[n:]]
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
        if "training" not in raw and "channel_names" in raw and "labels" in raw:
            raw = {**raw, **_nnunet_v2_lists(path.resolve().parent, raw, path)}
        for key in ("labels", "training"):
            if key not in raw:
                raise DataError(f"{path}: missing key {key!r}")
        if not isinstance(raw["labels"], dict):
            raise DataError(f"{path}: 'labels' must map label values to names, e.g. {{\"0\": \"background\"}}")
        labels, ignore = parse_labels(raw["labels"], str(path))
        root = path.resolve().parent
        channel_names = _channel_names(raw, path)
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
                for where, p in (
                    *((f"{split}[{i}].image", f) for f in case.files),
                    (f"{split}[{i}].label", case.label),
                )
                if p is not None and not (p.is_file() or (p.is_dir() and where.endswith(".image")))
            ]
            if missing:
                raise DataError(f"{path}: {len(missing)} listed file(s) absent:\n  " + "\n  ".join(missing))
        return cls(
            root=root,
            labels=labels,
            name=str(raw.get("name", "")),
            source=str(path),
            ignore_label=ignore,
            channel_names=channel_names,
            **splits,
        )

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

        def image(c: Case) -> str | list[str]:
            return [rel(f) for f in c.files] if c.channels else rel(c.image)

        def labeled(cases: list[Case]) -> list[dict[str, Any]]:
            return [{"image": image(c), "label": rel(c.label)} for c in cases if c.label is not None]

        out: dict[str, Any] = {
            "name": self.name,
            "labels": {
                **{str(k): v for k, v in sorted(self.labels.items())},
                **({IGNORE_KEY: self.ignore_label} if self.ignore_label is not None else {}),
            },
            "numTraining": len(self.training),
            "training": labeled(self.training),
            "validation": labeled(self.validation),
            "unlabeled": [{"image": image(c)} for c in self.unlabeled],
            "test": [{"image": image(c)} if c.label is None else {"image": image(c), "label": rel(c.label)} for c in self.test],
        }
        if self.channel_names:
            out["modality"] = {str(i): n for i, n in enumerate(self.channel_names)}
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


# -- prediction inputs --------------------------------------------------------------
def group_inputs(paths: Sequence[str | os.PathLike], channels: int) -> list[Case]:
    """Cases from prediction inputs for a model of ``channels`` input channels.

    A file (or DICOM folder) that holds all ``channels`` itself (4D, RGB, single
    channel for a 1-channel model) is one case; files named ``<case>_0000<ext>``,
    ``<case>_0001<ext>``, ... (nnU-Net) are grouped into one case each.

    Raises
    ------
    DataError
        A file's channel count fits neither way, or a group misses channels.
    """
    from .io import read_channels_geometry

    cases: list[Case] = []
    groups: dict[str, list[tuple[str, Path]]] = {}
    for raw in paths:
        path = Path(raw)
        count = read_channels_geometry(path)[1]
        name = case_name_from_path(path)
        if count == channels:
            cases.append(Case(name, path))
            continue
        base = _strip_channel_suffix(name)
        if count != 1 or base == name:
            raise DataError(
                f"{path}: has {count} channel(s) but the model takes {channels}; give one file with all channels "
                f"or one file per channel named <case>_0000{''.join(path.suffixes)}, <case>_0001..."
            )
        groups.setdefault(base, []).append((name, path))
    for base, members in groups.items():
        members.sort()
        if len(members) != channels:
            listed = ", ".join(p.name for _, p in members)
            raise DataError(f"{base}: {len(members)} channel file(s) ({listed}) but the model takes {channels}")
        files = [p for _, p in members]
        cases.append(Case(base, files[0], None, tuple(files[1:])))
    return cases


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


def parse_labels(raw: Mapping[str, Any], source: str) -> tuple[dict[int, str], int | None]:
    """Class names by value, and the ignore value, from a ``dataset.json`` ``labels`` object.

    Accepts MSD's ``{"0": "background", "1": "atrium"}`` and nnU-Net v2's
    ``{"background": 0, "atrium": 1}``; either may add ``"ignore": N`` (nnU-Net v2's
    declaration of unlabeled voxels).
    """
    labels: dict[int, str] = {}
    ignore: int | None = None
    for k, v in raw.items():
        if str(k).strip().lower() == IGNORE_KEY and not isinstance(v, str):
            if isinstance(v, bool) or not isinstance(v, int):
                raise DataError(f"{source}: labels: 'ignore' must be an integer label value, got {v!r}")
            ignore = int(v)
            continue
        try:
            value = int(k)
        except ValueError:
            pass
        else:
            if value in labels:
                raise DataError(f"{source}: labels: label value {value} is listed twice ({k!r} and another key)")
            labels[value] = str(v)
            continue
        if isinstance(v, int) and not isinstance(v, bool):  # nnU-Net v2: name -> value
            if v in labels:
                raise DataError(f"{source}: labels: value {v} is given twice ({labels[v]!r} and {k!r})")
            labels[int(v)] = str(k)
        else:
            raise DataError(
                f"{source}: labels: key {k!r} is not an integer label value (and {v!r} is not one either)"
            )
    return labels, ignore


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
    images = image if isinstance(image, list) else [image]
    for value, key in (*((v, "image") for v in images), (label, "label")):
        if value is not None and not isinstance(value, str):
            raise DataError(f"{source}: {where}.{key} must be a path string, got {type(value).__name__}")
    if not images:
        raise DataError(f"{source}: {where}.image is an empty list")
    paths = [_resolve(v, root) for v in images]
    label_path = _resolve(label, root) if (label and keep_label) else None
    if len(paths) == 1 and not paths[0].exists():
        found = _channel_files(paths[0])  # nnU-Net: "case.nii.gz" names case_0000.nii.gz, case_0001.nii.gz, ...
        if found:
            return Case(case_name_from_path(paths[0]), found[0], label_path, tuple(found[1:]))
    name = case_name_from_path(paths[0])
    if len(paths) > 1:
        name = _strip_channel_suffix(name)
    return Case(name, paths[0], label_path, tuple(paths[1:]))


#: nnU-Net's channel suffix: ``<case>_0000.<ext>`` is channel 0.
_CHANNEL_DIGITS = 4


def _strip_channel_suffix(name: str) -> str:
    stem, _, digits = name.rpartition("_")
    return stem if stem and len(digits) == _CHANNEL_DIGITS and digits.isdigit() else name


def _channel_files(path: Path) -> list[Path]:
    """``<case>_0000<ext>``, ``<case>_0001<ext>``, ... beside ``path`` (``<case><ext>``), in order."""
    name = path.name
    ext = next((e for e in IMAGE_EXTENSIONS if name.lower().endswith(e)), "".join(path.suffixes))
    stem = name[: len(name) - len(ext)] if ext else name
    found = []
    for c in range(10**_CHANNEL_DIGITS):
        candidate = path.with_name(f"{stem}_{c:0{_CHANNEL_DIGITS}d}{ext}")
        if not candidate.is_file():
            break
        found.append(candidate)
    return found


def _channel_names(raw: Mapping[str, Any], source: Path) -> list[str]:
    """``channel_names`` (nnU-Net v2) or ``modality`` (MSD) as a list by channel index."""
    names = raw.get("channel_names", raw.get("modality"))
    if names is None:
        return []
    if not isinstance(names, dict):
        raise DataError(f"{source}: 'channel_names'/'modality' must map channel indices to names, e.g. {{\"0\": \"T2\"}}")
    try:
        by_index = {int(k): str(v) for k, v in names.items()}
    except ValueError:
        raise DataError(f"{source}: 'channel_names'/'modality' keys must be channel indices 0, 1, ...") from None
    if sorted(by_index) != list(range(len(by_index))):
        raise DataError(f"{source}: channel indices must be 0..C-1 without gaps, got {sorted(by_index)}")
    return [by_index[i] for i in range(len(by_index))]


def _nnunet_v2_lists(root: Path, raw: Mapping[str, Any], source: Path) -> dict[str, list[dict[str, Any]]]:
    """``training`` and ``test`` of an nnU-Net v2 raw dataset (no lists in its dataset.json):
    ``imagesTr/<case>_0000<file_ending>`` with ``labelsTr/<case><file_ending>``, and ``imagesTs``."""
    ending = str(raw.get("file_ending", ".nii.gz"))
    lists: dict[str, list[dict[str, Any]]] = {"training": [], "test": []}
    for split, folder, labels in (("training", "imagesTr", "labelsTr"), ("test", "imagesTs", None)):
        images = root / folder
        if not images.is_dir():
            if split == "training":
                raise DataError(f"{source}: no 'training' list and no {folder}/ folder beside it")
            continue
        suffix = f"_{0:0{_CHANNEL_DIGITS}d}{ending}"
        for first in sorted(images.glob(f"*{suffix}")):
            case = first.name[: -len(suffix)]
            entry: dict[str, Any] = {"image": f"./{folder}/{case}{ending}"}
            if labels is not None:
                entry["label"] = f"./{labels}/{case}{ending}"
            lists[split].append(entry)
    return lists


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
