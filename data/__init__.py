"""sagecast data: SAGE Mobotix download, node registry, synthetic sky, preparation."""

from data.formats import read_thermal_csv
from data.registry import RegistryError, is_day, local_date, node_location, node_period, sun_elevation

__all__ = ["PairedSkyDataset", "RegistryError", "is_day", "local_date", "node_location", "node_period",
           "read_thermal_csv", "sun_elevation"]


def __getattr__(name: str):
    if name == "PairedSkyDataset":  # lazy: `import data` must not import torch
        from data.dataset import PairedSkyDataset

        return PairedSkyDataset
    raise AttributeError(f"module 'data' has no attribute {name!r}")
