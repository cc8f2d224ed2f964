"""Find the RGB and thermal files under a raw folder and pair them (used by `python -m data.prepare`).

Two layouts are read, also side by side in one folder:
  (a) `RAW/<VSN>/{rgb,thermal}/{ts_ns}-{filename}` (data.sage.download, data.synthetic): a capture is (VSN, ts_ns);
  (b) the original workflow's `RAW/rgb/`, `RAW/rgb/processed/`, `RAW/thermal/` with names like
      `rgb_20230521-095736_W057_6144x2048_position10.jpg`: a capture is (VSN, UTC second).
Within a capture, an RGB JPG and a thermal celsius CSV with the same position (and custom-mode image
number) form a pair. Files that cannot be paired, or are not images (plot JPGs, `.raw`, `uint.csv`, `.nc`),
come back as `Skip` records with a reason (also names whose timestamp lies outside PLAUSIBLE_YEARS, and
entries that cannot be read, such as symlink loops); a capture whose RGB and thermal positions disagree yields
`BadPair`s (two plugins drove the camera at once) - listed, never used, never deleted.
"""

from __future__ import annotations

import datetime as dt
import stat
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from data.formats import (
    RGB,
    THERMAL,
    MobotixName,
    parse_mobotix_name,
    row_presets,
    split_original_name,
    split_ts_name,
)

ORIGINAL_DIRS = ("rgb", "rgb/processed", "thermal")  # layout (b), in order of preference for duplicates
NO_POSITION = -1  # index value for files without a position (kept only with --keep-unpositioned)
PLAUSIBLE_YEARS = (2015, 2100)  # SAGE/Waggle uploads start after 2015; anything else is a garbled name
_TS_RANGE = tuple(int(dt.datetime(y, 1, 1, tzinfo=dt.timezone.utc).timestamp()) * 10**9 for y in PLAUSIBLE_YEARS)


@dataclass(frozen=True)
class RawFile:
    path: Path
    rel: str  # path relative to the raw folder, as written in the index
    vsn: str
    ts_ns: int
    name: MobotixName


@dataclass(frozen=True)
class Pair:
    vsn: str
    ts_ns: int
    position: int
    rgb: RawFile
    thermal: RawFile


@dataclass(frozen=True)
class BadPair:
    rgb: RawFile
    thermal: RawFile
    reason: str


@dataclass(frozen=True)
class Skip:
    file: str  # relative path
    reason: str  # short key, counted in report.json
    detail: str = ""


def scan_raw(raw: Path) -> tuple[list[RawFile], list[Skip]]:
    """Every RGB/thermal file under `raw` in either layout; everything else as a Skip."""
    files, skipped, seen = [], [], set()
    candidates = [(p, "a") for node in sorted(raw.iterdir()) if node.is_dir()
                  for kind in (RGB, THERMAL) for p in _listdir(node / kind, raw, skipped)]
    candidates += [(p, "b") for sub in ORIGINAL_DIRS for p in _listdir(raw / sub, raw, skipped)]
    for path, layout in candidates:
        rel, stored = path.relative_to(raw).as_posix(), path.name
        if layout == "a":
            parsed = split_ts_name(stored)
            if parsed is None:
                skipped.append(Skip(rel, "unparsed_name", "expected {ts_ns}-{filename}"))
                continue
            vsn, (ts_ns, filename) = path.parent.parent.name.upper(), parsed
        else:
            parsed = split_original_name(stored)
            if parsed is None:
                skipped.append(Skip(rel, "unparsed_name", "expected [rgb_]YYYYmmdd-HHMMSS_VSN_{filename}"))
                continue
            stamp, vsn, filename = parsed
            try:
                when = dt.datetime.strptime(stamp, "%Y%m%d-%H%M%S").replace(tzinfo=dt.timezone.utc)
            except ValueError as e:
                skipped.append(Skip(rel, "bad_name", f"timestamp {stamp!r}: {e}"))
                continue
            ts_ns = int(when.timestamp()) * 1_000_000_000
            if stored in seen:  # the same file in rgb/ and rgb/processed/
                skipped.append(Skip(rel, "duplicate", "same name already found in an earlier folder"))
                continue
            seen.add(stored)
        if not _TS_RANGE[0] <= ts_ns < _TS_RANGE[1]:
            skipped.append(Skip(rel, "bad_name", f"timestamp {ts_ns} ns is outside the years "
                                                 f"{PLAUSIBLE_YEARS[0]}..{PLAUSIBLE_YEARS[1]}"))
            continue
        name = parse_mobotix_name(filename)
        if name.skip_reason:
            skipped.append(Skip(rel, name.kind, name.skip_reason))
        else:
            files.append(RawFile(path, rel, vsn, ts_ns, name))
    return files, skipped


def _listdir(folder: Path, raw: Path, skipped: list[Skip]) -> list[Path]:
    """Regular files in `folder`; entries that cannot be stat'ed (symlink loops, dangling links, I/O
    errors) are added to `skipped` as 'unreadable' instead of vanishing silently."""
    if not folder.is_dir():
        return []
    files = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        try:
            if stat.S_ISREG(p.stat().st_mode):
                files.append(p)
        except OSError as e:
            skipped.append(Skip(p.relative_to(raw).as_posix(), "unreadable", f"{type(e).__name__}: {e.strerror}"))
    return files


def pair_files(files: list[RawFile]) -> tuple[list[Pair], list[BadPair], list[Skip]]:
    """Pairs within each capture (never assuming one file per kind: a capture may hold a second set)."""
    captures: dict[tuple[str, int], dict[str, list[RawFile]]] = defaultdict(lambda: {RGB: [], THERMAL: []})
    for f in files:
        captures[f.vsn, f.ts_ns][f.name.kind].append(f)
    pairs, bad, skipped = [], [], []
    for (vsn, ts_ns), kinds in sorted(captures.items()):
        by_key = {kind: _group(kinds[kind]) for kind in (RGB, THERMAL)}
        rgb_left, th_left = [], []
        for key in sorted(by_key[RGB].keys() | by_key[THERMAL].keys(), key=repr):
            rgbs, ths = by_key[RGB].get(key, []), by_key[THERMAL].get(key, [])
            if rgbs and ths:
                position = key[0] if key[0] is not None else NO_POSITION
                pairs.append(Pair(vsn, ts_ns, position, rgbs[0], ths[0]))
                skipped += [Skip(f.rel, "duplicate", "second file of this kind and position in one capture")
                            for f in rgbs[1:] + ths[1:]]
            else:
                rgb_left += rgbs
                th_left += ths
        for r, t in zip(rgb_left, th_left, strict=False):  # extras on either side: skipped below
            bad.append(BadPair(r, t, f"position mismatch: rgb {r.name.position}, thermal {t.name.position}"))
        skipped += [Skip(f.rel, "no_thermal", "no thermal CSV in this capture") for f in rgb_left[len(th_left):]]
        skipped += [Skip(f.rel, "no_rgb", "no RGB JPG in this capture") for f in th_left[len(rgb_left):]]
    return pairs, bad, skipped


def _group(files: list[RawFile]) -> dict[tuple, list[RawFile]]:
    groups: dict[tuple, list[RawFile]] = defaultdict(list)
    for f in sorted(files, key=lambda f: f.rel):
        groups[f.name.position, f.name.image_index].append(f)
    return groups


def filter_positions(pairs: list[Pair], *, rows=("sky",), all_positions: bool, keep_unpositioned: bool
                     ) -> tuple[list[Pair], list[Skip]]:
    """The presets of `rows` (every numbered one with `all_positions`); direction/custom positions are never
    indexed (no int)."""
    kept, skipped, presets = [], [], set(row_presets(rows))
    for p in pairs:
        pos = p.rgb.name.position
        if pos is None:
            reason = None if keep_unpositioned else ("no_position", "name carries no position")
        elif not isinstance(pos, int):
            reason = ("non_preset_position", f"{p.rgb.name.mode}-mode position {pos!r}")
        elif not (all_positions or pos in presets):
            reason = ("other_row", f"preset {pos} is not in the rows {', '.join(rows)}")
        else:
            reason = None
        if reason:
            skipped += [Skip(p.rgb.rel, *reason), Skip(p.thermal.rel, *reason)]
        else:
            kept.append(p)
    return kept, skipped
