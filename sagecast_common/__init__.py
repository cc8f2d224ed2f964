"""Helpers shared by data preparation and both stages: config, distributed launch, run files.

Nothing here imports a stage; both stages import from here, never from each other.
"""
