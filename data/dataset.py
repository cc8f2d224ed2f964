"""`PairedSkyDataset`: the prepared RGB/thermal pairs as a torch Dataset for stage 1 (VICReg's two views).

    ds = PairedSkyDataset("runs/prepared", "train")        # augmented, day rows only
    rgb, thermal = ds[0]                                    # (3, s, s), (1, s, s) float32, normalised

Reads the memory-mapped `rgb.npy` / `thermal.npy` of a `python -m data.prepare` folder (nothing is decoded).
Geometric augmentations: a random resized crop of the sky, then (`independent_crops=True`, the default) each
modality's box jittered on its own - shifted and rescaled - while the two boxes keep an IoU >= MIN_CROP_IOU,
so both views still look at mostly the same sky but their crop geometry differs. With one shared box (the
arrays are pixel-aligned) both frames' elevation gradients match exactly, and VICReg's invariance term can be
met by encoding crop geometry instead of clouds. The horizontal flip is shared. Photometric ones are
per modality: colour jitter and blur for RGB, a global offset plus pixel noise in °C for thermal. Then both
are normalised with the prepared folder's norm_stats.json (train split). The folder must be complete
(data.prepare.outputs.require_complete: its complete.json matches its files), else a one-line UserError
names the command that repairs it; so does any file that cannot be read. Random draws come from a generator
seeded by (seed, torch.initial_seed()), so they differ per DataLoader worker and epoch and are reproducible
under torch.manual_seed. Memmaps open lazily in each process, so DataLoader workers and DistributedSampler
work as usual.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torchvision.transforms.v2 import functional as TF

from data.prepare.outputs import repair_command, require_complete
from sagecast_common.cli import UserError

CROP_SCALE = (0.35, 1.0)  # share of the frame the random crop keeps
CROP_RATIO = (3 / 4, 4 / 3)
CROP_SHIFT, CROP_RESCALE = 0.2, (0.8, 1.25)  # per-modality jitter: shift (share of the box side), side scale
MIN_CROP_IOU = 0.5  # the two modalities' boxes always overlap at least this much
JITTER = {"brightness": 0.3, "contrast": 0.3, "saturation": 0.2, "hue": 0.02}  # kept mild: colour is signal
P_JITTER, P_BLUR, BLUR_SIGMA = 0.8, 0.2, (0.1, 1.5)
THERMAL_OFFSET_C, THERMAL_NOISE_C = 1.0, 0.2  # std of the global offset and of the per-pixel noise


class NormStats:
    """Train-split statistics from PREPARED/norm_stats.json; `normalise` works on (..., C, H, W) tensors."""

    def __init__(self, stats: dict):
        self.rgb_mean = torch.tensor(stats["rgb_mean"], dtype=torch.float32).view(3, 1, 1)
        self.rgb_std = torch.tensor(stats["rgb_std"], dtype=torch.float32).view(3, 1, 1)
        self.thermal_mean, self.thermal_std = float(stats["thermal_mean"]), float(stats["thermal_std"])

    @classmethod
    def load(cls, prepared_dir) -> NormStats:
        path = Path(prepared_dir) / "norm_stats.json"
        try:
            return cls(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
            raise UserError(f"{path} is unreadable ({type(e).__name__}); {_fix(prepared_dir)}") from None

    def normalise(self, rgb: torch.Tensor, thermal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """rgb in 0..1, thermal in °C → standardised."""
        return (rgb - self.rgb_mean) / self.rgb_std, (thermal - self.thermal_mean) / self.thermal_std


def _fix(prepared_dir) -> str:
    return f"rerun `{repair_command(Path(prepared_dir))}` (incremental: decoded pairs are reused)"


def open_array(path: Path) -> np.ndarray:
    """A prepared .npy memory-mapped, or a one-line UserError naming it (truncated, not an array, ...)."""
    try:
        return np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"{path} is not a readable array ({type(e).__name__}: {e}); {_fix(path.parent)}") from None


def normalised_frames(prepared_dir, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Full frames for array rows (N,), batched: what PairedSkyDataset(augment=False) returns, stacked."""
    prepared = Path(prepared_dir)
    rgb = open_array(prepared / "rgb.npy")[rows]
    thermal = open_array(prepared / "thermal.npy")[rows]
    rgb = torch.from_numpy(np.asarray(rgb)).permute(0, 3, 1, 2).float().div_(255.0)
    thermal = torch.from_numpy(np.asarray(thermal, dtype=np.float32))[:, None]
    return NormStats.load(prepared).normalise(rgb, thermal)


class PairedSkyDataset(torch.utils.data.Dataset):
    def __init__(self, prepared_dir, split: str | None, *, augment: bool = True, day_only: bool = True,
                 crop_size: int | None = None, seed: int = 0, independent_crops: bool = True):
        self.dir = Path(prepared_dir)
        require_complete(self.dir)
        try:
            index = pd.read_parquet(self.dir / "index.parquet")
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise UserError(f"{self.dir / 'index.parquet'} is unreadable ({type(e).__name__}); {_fix(self.dir)}"
                            ) from None
        if split not in (None, "all"):
            if split not in ("train", "val", "test"):
                raise ValueError(f"split must be train, val, test, 'all' or None; got {split!r}")
            index = index[index["split"] == split]
        if day_only:
            index = index[index["is_day"]]
        self.index = index.reset_index(drop=True)
        self.rows = self.index["row"].to_numpy()
        self.stats = NormStats.load(self.dir)
        self.augment, self.seed, self.independent_crops = augment, seed, independent_crops
        self.size = int(open_array(self.dir / "rgb.npy").shape[1])
        self.crop_size = crop_size or self.size
        self._arrays = self._gen = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self):
        return {**self.__dict__, "_arrays": None, "_gen": None}  # each worker opens its own memmaps

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._arrays is None:
            self._arrays = (open_array(self.dir / "rgb.npy"), open_array(self.dir / "thermal.npy"))
        row = int(self.rows[i])
        rgb = torch.from_numpy(np.array(self._arrays[0][row])).permute(2, 0, 1).float().div_(255.0)
        thermal = torch.from_numpy(np.array(self._arrays[1][row], dtype=np.float32))[None]
        if self.augment:
            rgb, thermal = self._augment(rgb, thermal)
        elif self.crop_size != self.size:
            rgb = TF.resize(rgb, [self.crop_size] * 2, antialias=True)
            thermal = TF.resize(thermal, [self.crop_size] * 2, antialias=True)
        return self.stats.normalise(rgb, thermal)

    def _uniform(self, lo: float = 0.0, hi: float = 1.0) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=self._gen))

    def crop_box(self) -> tuple[int, int, int, int]:
        """(top, left, height, width) of a random resized crop, RandomResizedCrop's rule."""
        S = self.size
        for _ in range(10):
            area = S * S * self._uniform(*CROP_SCALE)
            ratio = math.exp(self._uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
            w, h = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
            if 0 < w <= S and 0 < h <= S:
                top = int(torch.randint(0, S - h + 1, (), generator=self._gen))
                left = int(torch.randint(0, S - w + 1, (), generator=self._gen))
                return top, left, h, w
        return 0, 0, S, S

    def jitter_box(self, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """`box` shifted by up to CROP_SHIFT of its side and each side rescaled in CROP_RESCALE, inside the frame."""
        top, left, h, w = box
        S = self.size
        h2 = min(S, max(1, round(h * self._uniform(*CROP_RESCALE))))
        w2 = min(S, max(1, round(w * self._uniform(*CROP_RESCALE))))
        cy = top + h / 2 + self._uniform(-CROP_SHIFT, CROP_SHIFT) * h
        cx = left + w / 2 + self._uniform(-CROP_SHIFT, CROP_SHIFT) * w
        top2 = min(max(0, round(cy - h2 / 2)), S - h2)
        left2 = min(max(0, round(cx - w2 / 2)), S - w2)
        return top2, left2, h2, w2

    def crop_pair(self) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
        """(rgb box, thermal box): one random resized crop, each modality jittered, IoU >= MIN_CROP_IOU."""
        box = self.crop_box()
        if not self.independent_crops:
            return box, box
        for _ in range(10):
            a, b = self.jitter_box(box), self.jitter_box(box)
            if box_iou(a, b) >= MIN_CROP_IOU:
                return a, b
        return box, box  # rare (a tiny box); the shared box trivially keeps the bound

    def _augment(self, rgb: torch.Tensor, thermal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._gen is None:
            self._gen = torch.Generator().manual_seed(hash((self.seed, torch.initial_seed())) % 2**63)
        box_rgb, box_thermal = self.crop_pair()
        out = [self.crop_size] * 2
        rgb = TF.resized_crop(rgb, *box_rgb, out, antialias=True)
        thermal = TF.resized_crop(thermal, *box_thermal, out, antialias=True)
        if self._uniform() < 0.5:
            rgb, thermal = rgb.flip(-1), thermal.flip(-1)
        if self._uniform() < P_JITTER:
            for name in torch.randperm(4, generator=self._gen).tolist():
                key = list(JITTER)[name]
                amount = JITTER[key]
                if key == "hue":
                    rgb = TF.adjust_hue(rgb, self._uniform(-amount, amount))
                else:
                    factor = self._uniform(1 - amount, 1 + amount)
                    rgb = getattr(TF, f"adjust_{key}")(rgb, factor)
        if self._uniform() < P_BLUR:
            sigma = self._uniform(*BLUR_SIGMA)
            rgb = TF.gaussian_blur(rgb, [2 * math.ceil(2 * sigma) + 1] * 2, [sigma, sigma])
        offset = float(torch.randn((), generator=self._gen)) * THERMAL_OFFSET_C
        noise = torch.randn(thermal.shape, generator=self._gen) * THERMAL_NOISE_C
        return rgb.clamp_(0.0, 1.0), thermal + offset + noise


def box_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over union of two (top, left, height, width) boxes."""
    dy = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    dx = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = dy * dx
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)
