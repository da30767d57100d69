"""Method registry: a new method is one module and one line here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import ConfigError
from .base import Method, build_params
from .cps import CPS
from .coranet import CoraNet
from .dust import DUST
from .supervised import Supervised
from .uadct import UADCT
from .uamt import UAMT, MeanTeacher
from .ucmt import UCMT

if TYPE_CHECKING:
    from ..config import RunConfig

__all__ = ["METHODS", "build_method", "method_names"]

METHODS: dict[str, type[Method]] = {
    Supervised.name: Supervised,
    MeanTeacher.name: MeanTeacher,
    UAMT.name: UAMT,
    CPS.name: CPS,
    UADCT.name: UADCT,
    UCMT.name: UCMT,
    CoraNet.name: CoraNet,
    DUST.name: DUST,
}


def method_names() -> list[str]:
    return sorted(METHODS)


def sparse_label_methods() -> list[str]:
    """Methods that train on sparse labels (a dataset ``ignore`` value)."""
    return sorted(n for n, cls in METHODS.items() if cls.supports_sparse_labels)


def build_method(cfg: "RunConfig", num_classes: int, in_channels: int | None = None) -> Method:
    """Instantiate the configured method with its networks (each a fresh initialisation);
    ``in_channels`` defaults to ``cfg.data.channels`` (set from the data when training starts)."""
    if in_channels is None:
        in_channels = int(cfg.data.channels)
    from ..networks.factory import build_network

    name = cfg.method.name
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(method_names())}")
    method_cls = METHODS[name]
    params = build_params(method_cls.Params, cfg.method.params, name)

    def factory(**kwargs):
        return build_network(cfg.network, cfg.data.spatial_dims, in_channels, num_classes, **kwargs)

    return method_cls(factory, num_classes, params)
