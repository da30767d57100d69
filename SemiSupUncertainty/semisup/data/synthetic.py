"""A small synthetic MR-like segmentation dataset for demos and tests.

Each case is a torso-like slab: an elliptical body (soft tissue with a bright
subcutaneous fat rim, air outside), an "organ" shaped like a left atrium (a
randomly rotated, smoothly deformed ellipsoid with two or three vein-like tubes),
a thin dark wall around it, and an unlabeled bright aorta-like tube. Intensities are
rendered per tissue class, blurred (partial volume), multiplied by a smooth bias field
and corrupted with Rician noise, then stored as int16 NRRD with an anisotropic
spacing and a non-zero, per-case origin so that geometry bugs show.

The fat rim and the aorta are at least as bright as the organ, so a single intensity
threshold cannot segment the organ; a small CNN can, from shape and context.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from .io import Geometry, write_image

__all__ = ["SyntheticCase", "make_synthetic_case", "make_synthetic_dataset", "LABEL_NAMES"]

log = logging.getLogger(__name__)

# Label names by class index; num_classes picks the first num_classes of them.
LABEL_NAMES: tuple[str, ...] = ("background", "organ", "wall", "vessel")

# Mean intensities (arbitrary units, scaled by 1000 when stored) of a bright-blood-like
# MR contrast: blood pool bright, myocardial wall dark, fat and the aorta brighter still.
_AIR = 0.02
_TISSUE = 0.42
_WALL = 0.26
_FAT = 0.95
_AORTA = 0.92
_ORGAN_CONTRAST = (0.46, 0.20)  # organ minus tissue at difficulty 0 and 1
_NOISE_SIGMA = (0.03, 0.15)  # Rician sigma at difficulty 0 and 1
_BIAS_AMPLITUDE = (0.08, 0.35)  # peak log-bias at difficulty 0 and 1
_INTENSITY_SCALE = 1000.0


@dataclass
class SyntheticCase:
    """One generated case, arrays in (x, y, z) order.

    Attributes
    ----------
    image:
        MR-like intensities, float32, already scaled to the stored range.
    label:
        Class indices 0..num_classes-1, uint8.
    spacing:
        Voxel size in mm (x, y, z).
    origin:
        Physical position of voxel (0, 0, 0) in mm (x, y, z), identity direction.
    """

    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]


def _lerp(pair: tuple[float, float], t: float) -> float:
    return pair[0] + (pair[1] - pair[0]) * t


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniform random 3x3 rotation (QR of a Gaussian matrix, sign-fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of points ``p`` (..., 3) to the segment from ``a`` to ``b``."""
    ab = b - a
    t = np.clip(((p - a) @ ab) / float(ab @ ab), 0.0, 1.0)
    return np.linalg.norm(p - (a + t[..., None] * ab), axis=-1)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: np.ndarray) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to unit standard deviation."""
    f = ndimage.gaussian_filter(rng.normal(size=shape), sigma_vox, mode="wrap")
    return (f - f.mean()) / (f.std() + 1e-12)


def make_synthetic_case(
    seed: int | np.random.SeedSequence | np.random.Generator,
    *,
    shape: tuple[int, int, int] = (48, 48, 32),
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.5),
    num_classes: int = 2,
    difficulty: float = 0.5,
) -> SyntheticCase:
    """Generate one synthetic case in memory.

    Parameters
    ----------
    seed:
        Seed (or generator) of this case; the same seed gives the same case.
    shape:
        Volume size in voxels (x, y, z); at least 16 per axis.
    spacing:
        Voxel size in mm (x, y, z).
    num_classes:
        2 (background, organ), 3 (+ wall around the organ) or 4 (+ aorta-like vessel).
    difficulty:
        0 (high contrast, little noise and bias) to 1 (low contrast, strong noise
        and bias); 0.5 is learnable by a small network in a few CPU minutes.

    Returns
    -------
    SyntheticCase
        Image, label and geometry.
    """
    if not 2 <= num_classes <= len(LABEL_NAMES):
        raise ValueError(f"num_classes must be 2..{len(LABEL_NAMES)}, got {num_classes}")
    if len(shape) != 3 or min(shape) < 16:
        raise ValueError(f"shape must be three sizes >= 16 (x, y, z), got {tuple(shape)}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive numbers (mm), got {tuple(spacing)}")
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty must be in [0, 1], got {difficulty}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    sp = np.asarray(spacing, dtype=float)
    extent = np.asarray(shape) * sp  # field of view in mm
    # Physical coordinates relative to the volume centre, (x, y, z, 3) in mm.
    axes = [(np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(shape, sp)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)

    # Body: elliptical cylinder along z, sometimes clipped by the field of view.
    body_r = extent[:2] * rng.uniform([0.44, 0.38], [0.52, 0.46])
    body_c = extent[:2] * rng.uniform(-0.03, 0.03, size=2)
    rho_body = np.linalg.norm((pts[..., :2] - body_c) / body_r, axis=-1)
    body = rho_body <= 1.0
    fat_mm = rng.uniform(2.0, 4.0)
    fat = body & (rho_body > 1.0 - fat_mm / body_r.min())

    # Organ: rotated ellipsoid whose radius is modulated by smooth functions of direction.
    radii = extent.min() * rng.uniform(0.15, 0.22, size=3)
    centre = extent * rng.uniform(-0.08, 0.08, size=3)
    rot = _random_rotation(rng)
    q = ((pts - centre) @ rot) / radii  # ellipsoid-normalised local coordinates
    rho = np.linalg.norm(q, axis=-1)
    u = q / np.maximum(rho, 1e-6)[..., None]
    modulation = np.ones(shape)
    for _ in range(4):  # low-frequency bumps on the sphere of directions
        w = _unit(rng) * rng.uniform(1.0, 3.0)
        modulation += rng.uniform(0.05, 0.11) * np.cos(u @ w + rng.uniform(0, 2 * np.pi))
    organ = rho <= modulation
    # Vein-like tubes leaving the organ (part of the organ label, as in left atrium data).
    for _ in range(int(rng.integers(2, 4))):
        d = _unit(rng)
        start = centre + d * 0.5 * radii.min()
        end = centre + d * (radii.max() + extent.min() * rng.uniform(0.08, 0.14))
        organ |= _segment_distance(pts, start, end) <= rng.uniform(1.8, 3.0) * sp.min()
    organ &= body & ~fat

    # Wall: a shell of a few mm around the organ (myocardium-like, dark).
    dist_out = ndimage.distance_transform_edt(~organ, sampling=sp)
    wall = (dist_out > 0) & (dist_out <= rng.uniform(1.8, 3.0)) & body & ~fat

    # Aorta-like bright tube along z, beside the organ and not touching it.
    ang = rng.uniform(0, 2 * np.pi)
    off = (radii.max() * 1.2 + extent.min() * 0.1) * np.array([np.cos(ang), np.sin(ang)])
    aorta_c = np.clip(centre[:2] + off, -0.6 * body_r + body_c, 0.6 * body_r + body_c)
    curve = rng.uniform(-0.08, 0.08, size=2)[None, None, None, :] * pts[..., 2:3]
    aorta_r = extent.min() * rng.uniform(0.06, 0.09)
    aorta = np.linalg.norm(pts[..., :2] - aorta_c - curve, axis=-1) <= aorta_r
    aorta &= body & ~fat & (dist_out > 2.0 * sp.max())

    # Label map (organ wins overlaps; wall and vessel labeled only when requested).
    label = np.zeros(shape, dtype=np.uint8)
    if num_classes >= 3:
        label[wall] = 2
    if num_classes >= 4:
        label[aorta] = 3
    label[organ] = 1

    # Tissue intensities with a low-frequency texture inside the body.
    texture = _smooth_field(rng, shape, 4.0 / sp)
    contrast = _lerp(_ORGAN_CONTRAST, difficulty)
    inten = np.full(shape, _AIR)
    inten[body] = _TISSUE * (1.0 + 0.12 * texture[body])
    inten[fat] = _FAT
    inten[aorta] = _AORTA
    inten[wall & ~aorta] = _WALL
    inten[organ] = (_TISSUE + contrast) * (1.0 + 0.05 * texture[organ])
    # Partial volume: blur of ~0.5 of the thickest voxel, isotropic in mm.
    inten = ndimage.gaussian_filter(inten, 0.5 * sp.max() / sp)

    # Smooth multiplicative bias field: exp of a random quadratic polynomial.
    c = pts / (extent / 2.0)
    terms = [c[..., 0], c[..., 1], c[..., 2], c[..., 0] * c[..., 1], c[..., 0] ** 2, c[..., 1] ** 2]
    log_bias = sum(rng.normal() * t for t in terms)
    log_bias *= _lerp(_BIAS_AMPLITUDE, difficulty) / (np.abs(log_bias).max() + 1e-12)
    inten = inten * np.exp(log_bias)

    # Rician noise: magnitude of a complex signal with Gaussian noise on both channels.
    sigma = _lerp(_NOISE_SIGMA, difficulty)
    real = inten + rng.normal(0.0, sigma, size=shape)
    imag = rng.normal(0.0, sigma, size=shape)
    image = np.sqrt(real * real + imag * imag) * _INTENSITY_SCALE

    # Non-zero origin, varying per case, so index/physical confusions show.
    origin = tuple(float(v) for v in (-extent / 2.0 + rng.uniform(-20.0, 20.0, size=3) + [-12.5, 31.0, 8.25]))
    return SyntheticCase(
        image=np.round(image).astype(np.float32),
        label=label,
        spacing=tuple(float(s) for s in sp),
        origin=origin,
    )


def _write_nrrd(arr: np.ndarray, path: Path, spacing: tuple[float, ...], origin: tuple[float, ...]) -> None:
    """Write an (x, y, z) array as compressed NRRD with its geometry (identity direction), atomically."""
    geometry = Geometry(
        size=tuple(int(n) for n in arr.shape),
        spacing=tuple(spacing),
        origin=tuple(origin),
        direction=tuple(float(v) for v in np.eye(3).ravel()),
    )
    write_image(arr, geometry, path, compress=True)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def make_synthetic_dataset(
    out_dir: str | os.PathLike,
    *,
    labeled: int = 4,
    unlabeled: int = 8,
    validation: int = 2,
    test: int = 2,
    shape: tuple[int, int, int] = (48, 48, 32),
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.5),
    num_classes: int = 2,
    seed: int = 0,
    difficulty: float = 0.5,
) -> Path:
    """Write a synthetic MSD-style dataset (NRRD volumes and ``dataset.json``).

    Layout: ``imagesTr``/``labelsTr`` (training and validation cases),
    ``imagesUnlabeled``, ``imagesTs``/``labelsTs``. ``dataset.json`` is written last
    (atomically), so its presence means the dataset is complete.

    Parameters
    ----------
    out_dir:
        Dataset folder, created if needed; existing case files are overwritten.
    labeled, unlabeled, validation, test:
        Number of cases in each split (``labeled`` >= 1, the others >= 0).
    shape:
        Volume size in voxels (x, y, z).
    spacing:
        Voxel size in mm (x, y, z).
    num_classes:
        Classes including background: 2, 3 (+ wall) or 4 (+ vessel).
    seed:
        Dataset seed; case ``i`` depends only on ``(seed, i)`` and the settings.
    difficulty:
        0 (easy) to 1 (hard): organ contrast, noise and bias-field strength.

    Returns
    -------
    Path
        Path of the written ``dataset.json``.
    """
    counts = {"training": labeled, "validation": validation, "unlabeled": unlabeled, "test": test}
    if labeled < 1 or min(counts.values()) < 0:
        raise ValueError(f"split sizes must be >= 0 with labeled >= 1, got {counts}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Split -> (image folder, label folder or None), MSD-like.
    folders = {
        "training": ("imagesTr", "labelsTr"),
        "validation": ("imagesTr", "labelsTr"),
        "unlabeled": ("imagesUnlabeled", None),
        "test": ("imagesTs", "labelsTs"),
    }
    entries: dict[str, list[dict[str, str]]] = {k: [] for k in counts}
    index = 0
    for split, n in counts.items():
        img_dir, lab_dir = folders[split]
        for _ in range(n):
            case = make_synthetic_case(
                np.random.SeedSequence([seed, index]),
                shape=shape,
                spacing=spacing,
                num_classes=num_classes,
                difficulty=difficulty,
            )
            name = f"synth_{index:03d}.nrrd"
            entry = {"image": f"{img_dir}/{name}"}
            _write_nrrd(case.image.astype(np.int16), out / entry["image"], case.spacing, case.origin)
            if lab_dir is not None:
                entry["label"] = f"{lab_dir}/{name}"
                _write_nrrd(case.label, out / entry["label"], case.spacing, case.origin)
            entries[split].append(entry)
            index += 1

    meta = {
        "name": "SemiSupSynthetic",
        "description": (
            "Synthetic MR-like volumes: a deformed ellipsoidal organ with vein-like tubes, "
            "dark wall, bright unlabeled fat rim and aorta, bias field, Rician noise."
        ),
        "reference": "semisup.data.synthetic",
        "licence": "CC0",
        "tensorImageSize": "3D",
        "modality": {"0": "MR"},
        "labels": {str(i): LABEL_NAMES[i] for i in range(num_classes)},
        "numTraining": labeled,
        "numTest": test,
        "generator": {"seed": seed, "difficulty": difficulty, "shape": list(shape), "spacing": list(spacing)},
        **entries,
    }
    path = out / "dataset.json"
    _atomic_write_text(path, json.dumps(meta, indent=2) + "\n")
    log.info("wrote synthetic dataset (%d cases) to %s", index, out)
    return path
