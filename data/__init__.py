"""sagecast data, grouped by job:

    data/sage/       talks to SAGE: query, download (fetch), node registry (nodes.json)
    data/synthetic/  the synthetic sky in the download's exact formats (python -m data.synthetic)
    data/prepare/    raw uploads → index + arrays (python -m data.prepare): pairing, image decoding, CSV parser
    formats.py, sky.py, dataset.py   shared by all of them: file names and formats, sky geometry, the Dataset
    folder_lock.py   one writer per output folder (flock; the second one exits 2 naming the first one's PID)
"""

from data.formats import read_thermal_csv
from data.sage.registry import RegistryError, is_day, local_date, node_location, node_period, sun_elevation

__all__ = ["PairedSkyDataset", "RegistryError", "is_day", "local_date", "node_location", "node_period",
           "read_thermal_csv", "sun_elevation"]


def __getattr__(name: str):
    if name == "PairedSkyDataset":  # lazy: `import data` must not import torch
        from data.dataset import PairedSkyDataset

        return PairedSkyDataset
    raise AttributeError(f"module 'data' has no attribute {name!r}")
