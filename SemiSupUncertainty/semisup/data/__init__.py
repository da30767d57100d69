"""Data: dataset description, image I/O with geometry, input checks, preprocessing,
a memory-mapped preprocessing cache, and the training/validation streams.

Arrays are channel-first in ITK axis order ``(C, x, y, z)``; :mod:`.io` is the only
module that transposes to and from SimpleITK's ``(z, y, x)``.
"""

from .cache import CachedCase, PreprocessCache, foreground_samples
from .checks import DEFAULT_MEMORY_LIMIT_GIB, check_case, check_dataset, check_image, count_channels
from .dataset import Case, DatasetSpec, case_name_from_path, strip_extension
from .errors import DataError
from .io import (
    GEOMETRY_TOLERANCE,
    Geometry,
    array_to_image,
    channels_to_array,
    geometry_difference,
    geometry_of,
    image_to_array,
    read_channels,
    read_channels_geometry,
    read_geometry,
    read_image,
    same_geometry,
    save_image,
    write_image,
)
from .loaders import build_train_streams, build_train_transform, load_validation_cases
from .preprocess import (
    normalize_intensity,
    preprocess_image,
    preprocess_label,
    preprocessed_geometry,
    resample_to_grid,
    restore_label_from_probabilities,
    restore_to_reference,
)

__all__ = [
    "DataError",
    # io
    "Geometry",
    "GEOMETRY_TOLERANCE",
    "read_image",
    "read_channels",
    "read_channels_geometry",
    "channels_to_array",
    "read_geometry",
    "image_to_array",
    "array_to_image",
    "write_image",
    "save_image",
    "geometry_of",
    "same_geometry",
    "geometry_difference",
    # dataset
    "Case",
    "DatasetSpec",
    "case_name_from_path",
    "strip_extension",
    # checks
    "check_case",
    "check_dataset",
    "check_image",
    "count_channels",
    "DEFAULT_MEMORY_LIMIT_GIB",
    # preprocessing
    "preprocess_image",
    "preprocess_label",
    "normalize_intensity",
    "preprocessed_geometry",
    "resample_to_grid",
    "restore_to_reference",
    "restore_label_from_probabilities",
    # cache and loaders
    "PreprocessCache",
    "CachedCase",
    "foreground_samples",
    "build_train_streams",
    "build_train_transform",
    "load_validation_cases",
]
