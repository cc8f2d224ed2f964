"""Stage 1: two-branch RGB/thermal VICReg (`sagecast-stage1-train`, `-export`, `-evaluate`).

`vicreg_loss` is imported lazily so that `import stage1_jea` does no work (no torch import).
"""

__all__ = ["vicreg_loss"]


def __getattr__(name):
    if name == "vicreg_loss":
        from stage1_jea.loss import vicreg_loss

        return vicreg_loss
    raise AttributeError(f"module 'stage1_jea' has no attribute {name!r}")
