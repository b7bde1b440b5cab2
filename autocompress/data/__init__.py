"""Data registry: the bundled ``digits`` default and local torchvision-format data sets."""

from __future__ import annotations

from autocompress.data import digits, torchvision_sets  # noqa: F401
from autocompress.data._images import Augmentation
from autocompress.data._registry import (
    DataSplits,
    LoadedData,
    dataset_entry,
    list_datasets,
    load_data,
    register_dataset,
    split_indices,
)

__all__ = ["Augmentation", "DataSplits", "LoadedData", "dataset_entry", "list_datasets", "load_data",
           "register_dataset", "split_indices"]
