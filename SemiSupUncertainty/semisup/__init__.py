"""Uncertainty-aware semi-supervised segmentation: the Slicer-free core library."""

from ._version import __version__

__all__ = ["__version__"]
