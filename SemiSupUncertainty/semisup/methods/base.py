"""The interface between the training engine and a semi-supervised method.

The engine knows nothing method-specific: it draws a labeled and an unlabeled batch,
calls :meth:`Method.training_step`, back-propagates the returned loss with one
optimizer over :meth:`Method.trainable_parameters`, then calls
:meth:`Method.after_optimizer_step` (EMA teachers live there).

Batches are MONAI-style dicts: ``"image"`` float tensor ``(B, 1, *spatial)``,
``"label"`` long tensor ``(B, 1, *spatial)`` (labeled batch only).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Protocol

import torch
import torch.nn as nn

__all__ = ["Method", "StepOutput", "NetworkFactory", "TrainingContext", "build_params"]

NetworkFactory = Callable[[], nn.Module]


@dataclass
class StepOutput:
    """Result of one training step.

    ``loss`` is back-propagated by the engine; ``logs`` holds detached scalar tensors
    (the engine reads them only every ``log_every`` steps, so no host sync per step).
    """

    loss: torch.Tensor
    logs: dict[str, torch.Tensor] = field(default_factory=dict)


class TrainingContext(Protocol):
    """What the engine lets a method see of the data (staged methods such as DUST).

    ``unlabeled_cases`` yields every unlabeled case once, preprocessed, full size:
    dicts with ``"name"`` and ``"image"`` (float tensor ``(1, 1, *spatial)`` on the
    training device). ``set_unlabeled_subset`` restricts the unlabeled batches to the
    named cases from the next iteration on (``None``: all of them again).
    """

    def unlabeled_cases(self) -> Iterator[dict[str, Any]]: ...

    def set_unlabeled_subset(self, names: list[str] | None) -> None: ...


def build_params(params_cls: type, raw: dict[str, Any] | None, method: str) -> Any:
    """Typed method parameters from a config mapping, with a clear error on unknown keys."""
    import typing

    from ..config import ConfigError, cast_value

    raw = dict(raw or {})
    names = {f.name for f in dataclasses.fields(params_cls)}
    unknown = set(raw) - names
    if unknown:
        raise ConfigError(f"method {method!r}: unknown parameter(s) {sorted(unknown)}; known: {sorted(names)}")
    hints = typing.get_type_hints(params_cls)
    return params_cls(**{k: cast_value(v, hints[k], f"method.params.{k}") for k, v in raw.items()})


class Method(nn.Module):
    """Base class of every method; owns its networks as sub-modules.

    Subclasses set ``name``, ``Params`` (a dataclass of named constants with their
    source), build their networks in ``__init__`` with ``network_factory`` (one call per
    network: different initialisations), and implement :meth:`training_step`.
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type] = object
    #: whether the method uses unlabeled batches at all (supervised baseline: False)
    uses_unlabeled: ClassVar[bool] = True
    #: whether every loss on labels skips IGNORE_INDEX voxels (sparse labels); methods
    #: whose only label term is ``losses.supervised_loss`` set it
    supports_sparse_labels: ClassVar[bool] = False

    def __init__(self, network_factory: NetworkFactory, num_classes: int, params: Any) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.params = params

    # -- training -----------------------------------------------------------------
    def training_step(
        self,
        labeled: dict[str, torch.Tensor],
        unlabeled: dict[str, torch.Tensor] | None,
        step: int,
        max_steps: int,
    ) -> StepOutput:
        raise NotImplementedError

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the optimizer updates (EMA teachers excluded)."""
        return (p for p in self.parameters() if p.requires_grad)

    def after_optimizer_step(self, step: int) -> None:
        """Called after every optimizer step (EMA updates)."""

    def on_iteration_start(self, step: int, context: TrainingContext) -> None:
        """Called before every iteration, on resume too: staged methods act here.

        State that must survive a resume (stage, selected cases) belongs in buffers or
        ``get_extra_state`` so it is saved with ``state_dict``.
        """

    # -- inference ----------------------------------------------------------------
    def inference_networks(self) -> list[nn.Module]:
        """Networks whose softmax outputs are averaged at prediction time."""
        raise NotImplementedError

    #: file suffix of the method's own uncertainty map, None where it defines none
    own_uncertainty_name: ClassVar[str | None] = None

    def own_uncertainty_map(self, image: torch.Tensor) -> torch.Tensor | None:
        """The method's own uncertainty on a preprocessed image ``(1, 1, *spatial)``.

        Written at prediction time as ``<case>_<own_uncertainty_name>.nrrd`` beside the
        MC-dropout entropy map. ``None`` where the method defines none.
        """
        return None

    def uncertainty_description(self) -> str:
        """What the uncertainty map written at prediction time means, for users."""
        return "predictive entropy (nats) of the mean softmax over MC-dropout samples"
