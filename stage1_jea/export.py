"""Export stage-1 backbone features for every prepared pair (all splits, day and night).

    sagecast-stage1-export --run runs/stage1 [--batch-size 256] [--prepared DIR] [--grid 2]

Reads RUN/encoders.pt (backbones only; the projectors are not part of the embedding) and writes
RUN/embeddings.parquet (vsn, timestamp, position, split, is_day, then float32 lists: emb_rgb, emb_thermal =
the pooled backbone vectors; grid_rgb, grid_thermal = the final feature map average-pooled to g×g, length
g*g*C, flattened in (row, col, channel) order) and RUN/embeddings.json (dims, the grid's description, archs,
SHA-256 of encoders.pt, run config, prepared dir and its fingerprint).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from sagecast_common.cli import UserError, make_parser, read_json, run_cli
from sagecast_common.encoders import load_encoders
from sagecast_common.runio import atomic_path, atomic_write_json, file_sha256
from stage1_jea.model import pooled_and_grid

COLUMNS = ("vsn", "timestamp", "position", "split", "is_day")


@torch.no_grad()
def extract_features(encoders: dict[str, torch.nn.Module], dataset, *, batch_size: int, device: torch.device,
                     num_workers: int = 0, desc: str = "export", grid: int = 2,
                     channels_last: bool = True) -> dict[str, np.ndarray]:
    """Backbone features float32, in dataset order: pooled {"rgb": (N, D_rgb), "thermal": (N, D_thermal)} and
    {"grid_rgb": (N, g*g*C_rgb), "grid_thermal": (N, g*g*C_thermal)} (see `model.pooled_and_grid`).

    channels_last on the CPU too: oneDNN convolutions in that layout run resnet10t inference on 64-px frames
    markedly faster (BENCHMARKS.md, stage 1 export rows); training saw no gain, so stage1_jea.train keeps it
    GPU-only."""
    cuda = device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for module in encoders.values():
        module.to(device, memory_format=memory_format).eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=cuda)
    out: dict[str, list[np.ndarray]] = {"rgb": [], "thermal": [], "grid_rgb": [], "grid_thermal": []}
    for batch in tqdm(loader, desc=desc, leave=False):
        for name, x in zip(("rgb", "thermal"), batch, strict=True):
            with autocast:
                pooled, cells = pooled_and_grid(encoders[name], x.to(device, non_blocking=True,
                                                                     memory_format=memory_format), grid=grid)
            out[name].append(pooled.float().cpu().numpy())
            out[f"grid_{name}"].append(cells.float().cpu().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def _list_column(x: np.ndarray) -> pa.ListArray:
    N, D = x.shape
    offsets = pa.array(np.arange(0, (N + 1) * D, D, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(x.astype(np.float32).ravel()))


def export(run: str | Path, *, batch_size: int = 256, prepared: str | Path | None = None,
           device: str = "auto", num_workers: int = 0, grid: int = 2) -> Path:
    run = Path(run)
    if grid < 1:
        raise SystemExit(f"--grid {grid}: must be >= 1")
    if not (run / "encoders.pt").exists():
        raise UserError(f"{run / 'encoders.pt'} not found: make it with `sagecast-stage1-train run_dir={run}`")
    encoders, meta = load_encoders(run / "encoders.pt")
    prepared = Path(prepared or meta["prepared"]).resolve()
    if not (prepared / "index.parquet").exists():
        raise UserError(f"prepared dir {prepared} has no index.parquet: make it with `sagecast-prepare` or pass "
                        "--prepared")
    if meta.get("step", 0) < meta.get("total_steps", 0):
        print(f"warning: {run / 'encoders.pt'} is from step {meta['step']} of {meta['total_steps']} (unfinished run)")
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    from data import PairedSkyDataset

    dataset = PairedSkyDataset(prepared, None, augment=False, day_only=False)
    feats = extract_features(encoders, dataset, batch_size=batch_size, device=dev, num_workers=num_workers,
                             grid=grid)
    index = dataset.index.reset_index(drop=True)
    table = pa.Table.from_pandas(index[list(COLUMNS)], preserve_index=False)
    for column, key in (("emb_rgb", "rgb"), ("emb_thermal", "thermal"), ("grid_rgb", "grid_rgb"),
                        ("grid_thermal", "grid_thermal")):
        table = table.append_column(column, _list_column(feats[key]))
    with atomic_path(run / "embeddings.parquet") as tmp:
        pq.write_table(table, tmp)
    config_path = run / "config.json"
    atomic_write_json(run / "embeddings.json", {
        "dim_rgb": int(feats["rgb"].shape[1]),
        "dim_thermal": int(feats["thermal"].shape[1]),
        "grid": {"g": grid, "order": "row, col, channel",
                 "dims": {b: int(feats[f"grid_{b}"].shape[1]) // (grid * grid) for b in ("rgb", "thermal")}},
        "rgb_arch": meta["specs"]["rgb"]["arch"],
        "thermal_arch": meta["specs"]["thermal"]["arch"],
        "checkpoint_sha256": file_sha256(run / "encoders.pt"),
        "checkpoint": "encoders.pt",
        "step": meta.get("step"),
        "config": read_json(config_path, made_by=f"sagecast-stage1-train run_dir={run}", what="stage-1 config")
        if config_path.exists() else None,
        "prepared_dir": str(prepared),
        "prepared_fingerprint": "sha256:" + file_sha256(prepared / "index.parquet"),
        "rows": len(index),
    })
    print(f"wrote {len(index)} rows ({feats['rgb'].shape[1]}+{feats['thermal'].shape[1]} dims) to "
          f"{run / 'embeddings.parquet'}")
    return run / "embeddings.parquet"


def main(argv: list[str] | None = None) -> None:
    ap = make_parser("sagecast-stage1-export", __doc__)
    ap.add_argument("--run", required=True, help="stage-1 run dir (with encoders.pt)")
    ap.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    ap.add_argument("--prepared", help="prepared dir (default: the one the run was trained on)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: CUDA when available")
    ap.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    ap.add_argument("--grid", type=int, default=2, help="grid features: final feature map pooled to g×g")
    args = ap.parse_args(argv)
    run_cli(lambda: export(args.run, batch_size=args.batch_size, prepared=args.prepared, device=args.device,
                           num_workers=args.num_workers, grid=args.grid) and None, prog=ap.prog)


if __name__ == "__main__":
    main()
