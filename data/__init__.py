"""sagecast data: SAGE Mobotix download, node registry, synthetic sky, preparation."""

from data.registry import RegistryError, is_day, local_date, node_location, node_period, sun_elevation

__all__ = ["RegistryError", "is_day", "local_date", "node_location", "node_period", "sun_elevation"]
