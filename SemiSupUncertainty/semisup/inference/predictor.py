"""Sliding-window prediction with MC-dropout uncertainty.

How the fast path works
-----------------------
MONAI's :func:`~monai.inferers.sliding_window_inference` calls a per-window
function that, for each network, draws the ``T`` MC-dropout samples *batched*: the
windows are repeated ``T`` times along the batch axis and go through one forward
pass (or the network's own ``mc_forward`` when it can reuse encoder features, see
below). The function returns two per-window **expectations**:

- ``mean``: the mean softmax over samples (and networks), ``C`` channels;
- ``expected_entropy``: the mean over samples of each sample's entropy, 1 channel.

Because both are expectations, the weighted blending of overlapping windows
(constant or Gaussian) is again an expectation over all the samples that cover a
voxel, so after stitching

- ``entropy = H(blended mean)`` (predictive entropy, UA-MT), and
- ``mutual_information = H(blended mean) - blended expected entropy``

are consistent, and no ``T x C x volume`` stack is ever held in memory.

Decisions
---------
- **Ensembles** (several networks, e.g. co-training pairs): softmaxes are averaged
  with equal weight per network (each network's MC mean first, so a network
  without dropout counts as much as one with it). Entropy and MI are then those of
  the ensemble: MI includes the disagreement between networks.
- **No dropout** (``has_dropout`` false, or ``mc_samples == 1``): one deterministic
  pass in eval mode. ``entropy`` is then the entropy of that softmax, i.e.
  aleatoric-only, and ``mutual_information`` is all zeros (logged). Use
  :func:`count_samples` to know beforehand.
- **Overlap regions**: a voxel covered by several windows averages samples from
  all of them, so MI there also contains the (small) disagreement between windows
  (zero with ``overlap=0``). The reference path's MI behaves differently there:
  each of its passes already blends independent dropout draws of several windows,
  which shrinks the spread between passes and so its MI (on a toy network, to
  about half). Mean probabilities and entropy agree in distribution at any overlap;
  compare MI between the two paths only at ``overlap=0``, where they agree.
- Volumes smaller than ``roi_size`` are zero-padded by MONAI and cropped back.
- A 2-number ``roi_size`` on a 3-D image runs a 2-D network slice by slice along
  the last image axis (z), the same slicing as 2-D training.

``mc_forward`` contract (feature reuse)
---------------------------------------
A network with ``supports_feature_reuse = True`` implements
``mc_forward(x: Tensor (B, Cin, *spatial), samples: int) -> Tensor (T, B, C, *spatial)``
returning *logits* of ``T`` samples that share one deterministic encoder pass and
run the stochastic decoder ``T`` times. It is called inside the ``mc_dropout``
context, so its dropout layers are active.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn as nn
from monai.data.utils import dense_patch_slices
from monai.inferers import sliding_window_inference
from monai.inferers.utils import _get_scan_interval
from monai.transforms import KeepLargestConnectedComponent

from ..networks.base import has_dropout, mc_dropout, set_mc_dropout
from .uncertainty import ENTROPY_EPS, predictive_entropy

__all__ = [
    "predict_volume",
    "predict_volume_reference",
    "count_samples",
    "largest_connected_component",
    "window_borders",
    "LABEL_SOURCES",
]

log = logging.getLogger(__name__)

_BLEND_MODES = ("constant", "gaussian")
#: Where the label map comes from: the argmax of the MC mean, or of one pass with
#: dropout off (the network's "expected" weights, as in training-time validation).
LABEL_SOURCES = ("mc_mean", "dropout_off")


# --------------------------------------------------------------------------- helpers


def _as_list(networks: nn.Module | Sequence[nn.Module]) -> list[nn.Module]:
    nets = [networks] if isinstance(networks, nn.Module) else list(networks)
    if not nets:
        raise ValueError("predict_volume needs at least one network")
    return nets


def _is_stochastic(net: nn.Module, mc_samples: int) -> bool:
    return mc_samples > 1 and has_dropout(net)


def count_samples(networks: nn.Module | Sequence[nn.Module], mc_samples: int) -> int:
    """Softmax samples averaged per voxel and window: ``T`` per dropout network, 1 otherwise.

    When this is 1 the mutual information returned by :func:`predict_volume` is all
    zeros and the entropy is aleatoric-only.
    """
    return sum(mc_samples if _is_stochastic(n, mc_samples) else 1 for n in _as_list(networks))


def _network_device(net: nn.Module) -> torch.device | None:
    for p in net.parameters():
        return p.device
    return None


def _resolve_device(nets: list[nn.Module], device: torch.device | str | None, image: torch.Tensor) -> torch.device:
    found = {d for d in (_network_device(n) for n in nets) if d is not None}
    if device is None:
        if len(found) > 1:
            raise ValueError(f"networks are on different devices {sorted(map(str, found))}; pass device=")
        return found.pop() if found else image.device
    dev = torch.device(device)
    for d in found:
        # Compare type and index loosely: "cuda" and "cuda:0" are the same for the user.
        if d.type != dev.type or (dev.index is not None and d.index is not None and d.index != dev.index):
            raise ValueError(f"networks are on {d} but device={dev}; move them first (net.to(device))")
    return dev


@contextlib.contextmanager
def _sampling_modes(nets: list[nn.Module], stochastic: list[bool]) -> Iterator[None]:
    """Eval mode for every network, dropout active on the sampled ones; restored on exit."""
    with contextlib.ExitStack() as stack:
        for net, sto in zip(nets, stochastic):
            if sto:
                stack.enter_context(mc_dropout(net))
            else:
                was_training = net.training
                net.eval()
                stack.callback(net.train, was_training)
        yield


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    # Mixed precision only where it pays (CUDA); CPU autocast would be bfloat16 and slower.
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda")
    return contextlib.nullcontext()


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    # Softmax and log in float32 even under autocast.
    return torch.softmax(logits.float(), dim=1)


def _check_inputs(
    image: torch.Tensor, roi_size: Sequence[int] | int, overlap: float, mc_samples: int, mode: str
) -> tuple[list[int], bool]:
    if not isinstance(image, torch.Tensor) or image.ndim not in (4, 5) or image.shape[0] != 1:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image must be a (1, C, *spatial) tensor with 2 or 3 spatial axes, got {shape}")
    n_spatial = image.ndim - 2
    roi = [int(roi_size)] * n_spatial if isinstance(roi_size, int) else [int(r) for r in roi_size]
    if any(r < 1 for r in roi):
        raise ValueError(f"roi_size must be positive, got {roi}")
    slice_wise = len(roi) == n_spatial - 1 == 2
    if len(roi) != n_spatial and not slice_wise:
        raise ValueError(f"roi_size {roi} does not match the image's {n_spatial} spatial axes")
    if mc_samples < 1:
        raise ValueError(f"mc_samples must be >= 1, got {mc_samples}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if mode not in _BLEND_MODES:
        raise ValueError(f"blend_mode must be one of {_BLEND_MODES}, got {mode!r}")
    return (roi + [1] if slice_wise else roi), slice_wise


def _flip_sets(flip_axes: Sequence[int], n_spatial: int) -> list[tuple[int, ...]]:
    """Every combination of the flipped image axes (the identity first), as tensor dims."""
    axes = sorted({int(a) for a in flip_axes})
    if any(a < 0 or a >= n_spatial for a in axes):
        raise ValueError(f"flip_axes {list(flip_axes)} must be image axes in 0..{n_spatial - 1}")
    dims = [a + 2 for a in axes]  # (B, C, *spatial)
    return [combo for r in range(len(dims) + 1) for combo in itertools.combinations(dims, r)]


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed the dropout draws inside, leaving the caller's random state as it was."""
    if seed is None:
        yield
        return
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


def window_borders(
    image_size: Sequence[int], roi_size: Sequence[int], overlap: float
) -> list[list[int]]:
    """Per image axis, the voxel planes where a sliding window starts or ends.

    The windows are MONAI's (``sliding_window_inference`` with the same ``roi_size``
    and ``overlap``); a border ``b`` on an axis means windows change between voxel
    ``b - 1`` and ``b``. The image edges are left out. Used to measure tile seams.
    """
    size = [int(v) for v in image_size]
    roi = [min(int(r), s) for r, s in zip(roi_size, size)]
    # MONAI's own window placement (the helper sliding_window_inference uses), so the
    # borders are exactly those of the stitching.
    interval = _get_scan_interval(size, roi, len(size), [float(overlap)] * len(size))
    borders: list[set[int]] = [set() for _ in size]
    for window in dense_patch_slices(size, roi, interval):
        for axis, sl in enumerate(window):
            for b in (sl.start, sl.stop):
                if 0 < b < size[axis]:
                    borders[axis].add(int(b))
    return [sorted(b) for b in borders]


_WindowFn = Callable[[torch.Tensor], dict[str, torch.Tensor]]


def _slice_wise(fn: _WindowFn) -> _WindowFn:
    """Run a 2-D predictor on (n, 1, X, Y, 1) windows of a 3-D image."""

    def wrapped(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v.unsqueeze(-1) for k, v in fn(x[..., 0]).items()}

    return wrapped


def _stitch(
    image: torch.Tensor,
    roi: list[int],
    sw_batch_size: int,
    fn: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    overlap: float,
    mode: str,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    # Windows are computed on `device`; the stitched maps stay on the image's device
    # (CPU for whole volumes), so GPU memory does not grow with the volume.
    return sliding_window_inference(
        image,
        roi_size=roi,
        sw_batch_size=sw_batch_size,
        predictor=fn,
        overlap=overlap,
        mode=mode,
        padding_mode="constant",
        cval=0.0,
        sw_device=device,
        device=image.device,
    )


def _finish(
    mean: torch.Tensor, exp_entropy: torch.Tensor | None, samples: int, label_probs: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    label_probs = mean if label_probs is None else label_probs
    entropy = predictive_entropy(mean, ENTROPY_EPS)
    if samples > 1 and exp_entropy is not None:
        mi = (entropy - exp_entropy).clamp_min(0.0)  # negatives are rounding only
    else:
        log.debug("one softmax sample per voxel: mutual information is zero, entropy is aleatoric-only")
        mi = torch.zeros_like(entropy)
    return {
        "probabilities": mean,
        "label_probabilities": label_probs,
        "label": label_probs.argmax(dim=1, keepdim=True).to(torch.int64),
        "entropy": entropy,
        "mutual_information": mi,
    }


# --------------------------------------------------------------------------- fast path


def _mc_window_stats(
    net: nn.Module, x: torch.Tensor, samples: int, sample_chunk: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean softmax (n, C, *) and mean per-sample entropy (n, 1, *) of ``samples`` draws."""
    n = x.shape[0]
    if getattr(net, "supports_feature_reuse", False):
        logits = net.mc_forward(x, samples)
        if logits.ndim != x.ndim + 1 or logits.shape[:2] != (samples, n):
            raise ValueError(
                f"{type(net).__name__}.mc_forward must return (T, B, C, *spatial) = ({samples}, {n}, C, ...), "
                f"got {tuple(logits.shape)}"
            )
        probs = torch.softmax(logits.float(), dim=2)
        ent = -(probs * torch.log(probs + ENTROPY_EPS)).sum(dim=2, keepdim=True)
        return probs.mean(dim=0), ent.mean(dim=0)
    chunk = samples if not sample_chunk else max(1, min(int(sample_chunk), samples))
    prob_sum: torch.Tensor | None = None
    ent_sum: torch.Tensor | None = None
    done = 0
    while done < samples:
        t = min(chunk, samples - done)
        # Sample-major repeat: rows [x0..x_{n-1}, x0..] so view(t, n, ...) splits samples.
        xr = x.repeat(t, *([1] * (x.ndim - 1)))
        p = _softmax(net(xr))
        ent = predictive_entropy(p, ENTROPY_EPS)
        p_s = p.view(t, n, *p.shape[1:]).sum(dim=0)
        e_s = ent.view(t, n, *ent.shape[1:]).sum(dim=0)
        prob_sum = p_s if prob_sum is None else prob_sum + p_s
        ent_sum = e_s if ent_sum is None else ent_sum + e_s
        done += t
    assert prob_sum is not None and ent_sum is not None
    return prob_sum / samples, ent_sum / samples


@torch.no_grad()
def predict_volume(
    networks: nn.Module | Sequence[nn.Module],
    image: torch.Tensor,
    roi_size: Sequence[int] | int,
    *,
    mc_samples: int = 8,
    overlap: float = 0.5,
    sw_batch_size: int = 2,
    device: torch.device | str | None = None,
    amp: bool = False,
    blend_mode: str = "constant",
    sample_chunk: int | None = None,
    seed: int | None = None,
    shared_masks: bool = False,
    label_source: str = "mc_mean",
    flip_axes: Sequence[int] = (),
) -> dict[str, torch.Tensor]:
    """Segment a whole volume and measure MC-dropout uncertainty in one sliding-window pass.

    Parameters
    ----------
    networks:
        One network or several (an ensemble, softmaxes averaged with equal weight).
        Each returns logits ``(B, C, *spatial)``; all on the same device.
    image:
        ``(1, C, *spatial)`` float tensor, already preprocessed, axes (x, y[, z]).
    roi_size:
        Window size (x, y, z), usually the training patch size. Two numbers on a 3-D
        image: a 2-D network applied slice by slice along z.
    mc_samples:
        ``T`` dropout samples per window for networks with dropout (UA-MT: 8).
        1 gives a deterministic eval-mode prediction.
    overlap:
        Fraction of overlap between neighbouring windows, in ``[0, 1)``.
    sw_batch_size:
        Windows per forward pass; a forward then holds ``sw_batch_size * T`` inputs.
    device:
        Where windows are computed; default the networks' device. The stitched
        outputs stay on ``image``'s device.
    amp:
        ``torch.autocast`` on CUDA (ignored on CPU); softmax and entropy stay float32.
    blend_mode:
        ``"constant"`` (UA-MT's plain average) or ``"gaussian"`` weighting of windows.
    sample_chunk:
        Split the ``T`` repeated samples into forwards of at most this many, to
        bound memory; default ``None`` draws all ``T`` in one forward.
    seed:
        Seed of the dropout draws; the same seed, image and weights give the same
        output on one machine. The caller's random state is left as it was.
        ``None`` draws from the global generator (not reproducible).
    shared_masks:
        Every window uses the same ``T`` dropout masks (the generator is re-seeded
        with ``seed``, default 0, before each window), so the MC mean is that of the
        same ``T`` thinned networks everywhere and the uncertainty does not jump at
        window borders (docs/benchmarks.md, "Tile seams"). Windows then go through
        the networks one at a time (``T`` rows per forward).
    label_source:
        ``"mc_mean"``: the label is the argmax of ``probabilities``;
        ``"dropout_off"``: of one extra pass with dropout off (``label_probabilities``).
    flip_axes:
        Test-time flips: every combination of flips along these image axes is
        predicted and flipped back; probabilities and expected entropies are averaged.

    Returns
    -------
    dict[str, torch.Tensor]
        ``probabilities`` ``(1, C, *spatial)`` float32 mean softmax;
        ``label_probabilities`` ``(1, C, *spatial)`` the probabilities the label is the
        argmax of (``probabilities`` itself for ``"mc_mean"``);
        ``label`` ``(1, 1, *spatial)`` int64 argmax;
        ``entropy`` ``(1, 1, *spatial)`` predictive entropy in nats (``[0, ln C]``);
        ``mutual_information`` ``(1, 1, *spatial)`` in nats, zeros when
        :func:`count_samples` is 1.
    """
    nets = _as_list(networks)
    roi, slice_wise = _check_inputs(image, roi_size, overlap, mc_samples, blend_mode)
    if label_source not in LABEL_SOURCES:
        raise ValueError(f"label_source must be one of {LABEL_SOURCES}, got {label_source!r}")
    flips = _flip_sets(flip_axes, image.ndim - 2)
    dev = _resolve_device(nets, device, image)
    stochastic = [_is_stochastic(n, mc_samples) for n in nets]
    samples = count_samples(nets, mc_samples)
    want_off = label_source == "dropout_off" and any(stochastic)
    mask_seed = (0 if seed is None else int(seed)) if shared_masks else None

    def one_window(x: torch.Tensor) -> dict[str, torch.Tensor]:
        mean_sum: torch.Tensor | None = None
        ent_sum: torch.Tensor | None = None
        off_sum: torch.Tensor | None = None
        with _autocast(dev, amp):
            for net, sto in zip(nets, stochastic):
                if sto:
                    if mask_seed is not None:
                        torch.manual_seed(mask_seed)  # the same T masks in every window
                    mean, ent = _mc_window_stats(net, x, mc_samples, sample_chunk)
                    if want_off:
                        set_mc_dropout(net, False)
                        try:
                            off = _softmax(net(x))
                        finally:
                            set_mc_dropout(net, True)
                    else:
                        off = mean
                else:
                    mean = off = _softmax(net(x))
                    ent = predictive_entropy(mean, ENTROPY_EPS)
                if mean_sum is not None and mean.shape != mean_sum.shape:
                    raise ValueError(
                        f"networks disagree on output shape: {tuple(mean.shape)} vs {tuple(mean_sum.shape)}"
                    )
                mean_sum = mean if mean_sum is None else mean_sum + mean
                ent_sum = ent if ent_sum is None else ent_sum + ent
                off_sum = off if off_sum is None else off_sum + off
        assert mean_sum is not None and ent_sum is not None and off_sum is not None
        out = {"mean": mean_sum / len(nets), "expected_entropy": ent_sum / len(nets)}
        if want_off:
            out["off"] = off_sum / len(nets)
        return out

    def window_stats(x: torch.Tensor) -> dict[str, torch.Tensor]:
        if mask_seed is None or x.shape[0] == 1:
            return one_window(x)
        parts = [one_window(x[i : i + 1]) for i in range(x.shape[0])]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    fn = _slice_wise(window_stats) if slice_wise else window_stats
    acc: dict[str, torch.Tensor] = {}
    with _seeded(seed, dev), _sampling_modes(nets, stochastic):
        for dims in flips:
            x = image.float()
            x = torch.flip(x, dims) if dims else x
            out = _stitch(x, roi, sw_batch_size, fn, overlap, blend_mode, dev)
            for key, value in out.items():
                value = value.float()
                value = torch.flip(value, dims) if dims else value
                acc[key] = value if key not in acc else acc[key] + value
    acc = {k: v / len(flips) for k, v in acc.items()}
    return _finish(acc["mean"], acc["expected_entropy"], samples, acc.get("off"))


# --------------------------------------------------------------------------- reference path


@torch.no_grad()
def predict_volume_reference(
    networks: nn.Module | Sequence[nn.Module],
    image: torch.Tensor,
    roi_size: Sequence[int] | int,
    *,
    mc_samples: int = 8,
    overlap: float = 0.5,
    sw_batch_size: int = 2,
    device: torch.device | str | None = None,
    amp: bool = False,
    blend_mode: str = "constant",
) -> dict[str, torch.Tensor]:
    """Naive MC dropout: ``T`` separate full sliding-window passes per network.

    The textbook procedure, kept to check :func:`predict_volume` (tests, benchmark).
    Each pass stitches one softmax volume ``p_t``; ``probabilities`` is their mean
    (networks weighted equally), ``entropy`` its entropy, and
    ``mutual_information = H(mean) - mean_t H(p_t)``. Same parameters and return
    value as :func:`predict_volume`. Networks without dropout get one pass.
    """
    nets = _as_list(networks)
    roi, slice_wise = _check_inputs(image, roi_size, overlap, mc_samples, blend_mode)
    dev = _resolve_device(nets, device, image)
    stochastic = [_is_stochastic(n, mc_samples) for n in nets]
    samples = count_samples(nets, mc_samples)

    mean_sum: torch.Tensor | None = None
    ent_sum: torch.Tensor | None = None
    with _sampling_modes(nets, stochastic):
        for net, sto in zip(nets, stochastic):
            passes = mc_samples if sto else 1

            def softmax_window(x: torch.Tensor, net: nn.Module = net) -> dict[str, torch.Tensor]:
                with _autocast(dev, amp):
                    return {"p": _softmax(net(x))}

            fn = _slice_wise(softmax_window) if slice_wise else softmax_window
            net_p: torch.Tensor | None = None
            net_e: torch.Tensor | None = None
            for _ in range(passes):
                p_t = _stitch(image.float(), roi, sw_batch_size, fn, overlap, blend_mode, dev)["p"].float()
                e_t = predictive_entropy(p_t, ENTROPY_EPS)
                net_p = p_t if net_p is None else net_p + p_t
                net_e = e_t if net_e is None else net_e + e_t
            assert net_p is not None and net_e is not None
            mean_sum = net_p / passes if mean_sum is None else mean_sum + net_p / passes
            ent_sum = net_e / passes if ent_sum is None else ent_sum + net_e / passes
    assert mean_sum is not None and ent_sum is not None
    return _finish(mean_sum / len(nets), ent_sum / len(nets), samples)


# --------------------------------------------------------------------------- post-processing


def largest_connected_component(
    label: torch.Tensor, num_classes: int, classes: Sequence[int] | None = None
) -> torch.Tensor:
    """Keep, for every foreground class (or only ``classes``), only its largest connected component.

    UCMT's 3-D post-processing, via MONAI ``KeepLargestConnectedComponent``
    (classes independently, full connectivity); removed voxels become background 0.

    Parameters
    ----------
    label:
        Integer label map ``(1, 1, *spatial)``, ``(1, *spatial)`` or ``(*spatial)``
        with at least 2 spatial axes.
    num_classes:
        ``C`` including background; classes ``1..C-1`` are processed.
    classes:
        Process only these foreground classes (e.g. those where it helped on
        validation); ``None`` processes all, an empty list none.

    Returns
    -------
    torch.Tensor
        Same shape, dtype and device as ``label``.
    """
    applied = list(range(1, num_classes)) if classes is None else sorted({int(c) for c in classes})
    if any(not 1 <= c < num_classes for c in applied):
        raise ValueError(f"classes {applied} must be foreground classes in 1..{num_classes - 1}")
    if not applied:
        return label.clone()
    if label.ndim >= 4 and label.shape[0] == 1 and label.shape[1] == 1:
        channel_first = label[0]  # (1, 1, *spatial) -> (1, *spatial)
    elif label.ndim >= 3 and label.shape[0] == 1:
        channel_first = label
    else:
        channel_first = label.unsqueeze(0)
    keep = KeepLargestConnectedComponent(applied_labels=applied, is_onehot=False, independent=True)
    out = keep(channel_first)
    out = out.as_tensor() if hasattr(out, "as_tensor") else torch.as_tensor(out)
    return out.reshape(label.shape).to(dtype=label.dtype, device=label.device)
