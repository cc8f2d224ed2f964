"""The node app: scans in, cloud-cover nowcasts and forecasts out through pywaggle.

    sagecast-edge --model runs/edge --source dir --raw runs/raw [--publish-coverage]
    sagecast-edge --model /model --source subscribe       # on the node (plugin/): the scanner's upload messages
    PYWAGGLE_LOG_DIR=out sagecast-edge ...        # pywaggle's offline mode: messages go to out/data.ndjson

Per scan (timestamp = the scan's first capture, ns): `sagecast.cloud.nowcast` per preset and for the whole sky
(meta position = the preset or "all", horizon_min "0"), `sagecast.cloud.forecast` per horizon (meta
horizon_min), both with meta model and model_version; `sagecast.time.{preprocess,encode,forecast}` in
seconds. Values are cloud fractions in [0, 1] from the stage-1 probe. The all-sky nowcast is also published
as `env.coverage.cloud` (the name solar-irradiance plugins read as whole-sky cover) only with
--publish-coverage. The last scans stay in memory as context; until it holds `context_scans` scans on the
scan's local day (after a start, a gap, or at sunrise) only nowcasts are published. Bad input (a missing
preset, a corrupt JPEG, a truncated CSV, a scan from another node) is published as `sagecast.skip` (value =
the reason, meta file/detail) and the loop goes on; a model folder whose hashes do not match is refused.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
from astral import Observer
from astral.sun import elevation

from edge_runtime import preprocess
from edge_runtime.model import EdgeModel, ModelError
from edge_runtime.scans import Scan, scans_in, stored_files
from edge_runtime.subscribe import SAGE_STORAGE, subscribed_scans

PROG = "sagecast-edge"
COVERAGE_NAME = "env.coverage.cloud"
DETAIL_CHARS = 200  # meta values stay short; the full reason goes to stderr

Publish = Callable[[str, float | str, dict, int], None]


class Nowcaster:
    """Turns scans into messages, keeping the context scans of the scan's local day in memory."""

    def __init__(self, model: EdgeModel, publish: Publish, *, publish_coverage: bool = False):
        self.model, self.publish, self.publish_coverage = model, publish, publish_coverage
        m = model.manifest
        loc = m["location"]
        self.observer = Observer(latitude=loc["lat"], longitude=loc["lon"], elevation=loc["elevation_m"])
        self.lon, self.tz = loc["lon"], ZoneInfo(loc["tz"])
        self.step_ns, self.tol_ns = m["step_min"] * 60e9, m["tolerance_min"] * 60e9
        self.T = m["context_scans"]
        self.context: deque = deque()  # (time_ns, local date, z (P, D), present (P,))
        self.meta = {"model": m["model"], "model_version": model.version}

    def skip(self, scan: Scan, reason: str, detail: str, *, position: str = "all", file: str = "") -> None:
        print(f"skip {scan.vsn} {scan.time_ns} position {position}: {reason}: {detail}", file=sys.stderr)
        self.publish("sagecast.skip", reason, {"position": position, "file": file, "detail": detail[:DETAIL_CHARS],
                                               **self.meta}, scan.time_ns)

    def frames(self, scan: Scan) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Normalised frames of the usable presets and the (P,) present mask; each unusable one is skipped."""
        m, rgbs, ths = self.model.manifest, [], []
        present = np.zeros(len(self.model.presets), bool)
        crop = m["crop"] if m["crop"] == "fov" else preprocess.parse_crop(m["crop"])
        for slot, pos in enumerate(self.model.presets):
            files = scan.files.get(pos, {})
            if set(files) != {"rgb", "thermal"}:
                lacking = sorted({"rgb", "thermal"} - set(files))
                self.skip(scan, "missing_preset", f"no {' or '.join(lacking)} file", position=str(pos))
                continue
            try:
                rgb = preprocess.load_rgb(files["rgb"], m["image_size"], crop)
                thermal = preprocess.load_thermal(files["thermal"], m["image_size"], tuple(m["thermal_range"]))
            except preprocess.BadInput as e:
                bad = files["rgb"] if e.reason in ("corrupt_jpg", "rgb_dims") else files["thermal"]
                self.skip(scan, e.reason, e.detail, position=str(pos), file=bad.name)
                continue
            rgbs.append(rgb), ths.append(thermal)
            present[slot] = True
        if not rgbs:
            return np.empty(0), np.empty(0), present
        x, t = preprocess.normalise(np.stack(rgbs), np.stack(ths), self.model.norm)
        return x, t, present

    def clock(self, time_ns: int) -> tuple[float, float, dt.date]:
        """(solar hour, sun elevation in degrees, local date) as stage2_forecast.samples and the index have them."""
        when = dt.datetime.fromtimestamp(time_ns // 1000 / 1e6, dt.timezone.utc)
        hours = (time_ns % (86400 * 10**9)) / 3.6e12
        return (hours + self.lon / 15.0) % 24.0, float(elevation(self.observer, when)), when.astimezone(self.tz).date()

    def pick_context(self, time_ns: int, day: dt.date) -> list | None:
        """The scan nearest t − k·step (k = 0..T−1) within the tolerance on the same local day, each slot k ≥ 1
        another scan than the anchor (samples.build_windows); None while a slot is empty."""
        picked = []
        for k in range(self.T):
            wanted = time_ns - k * self.step_ns
            best = min(self.context, key=lambda c: abs(c[0] - wanted))
            if abs(best[0] - wanted) > self.tol_ns or best[1] != day or (k and best[0] == time_ns):
                return None
            picked.append(best)
        return picked

    def process(self, scan: Scan) -> None:
        m, P = self.model.manifest, len(self.model.presets)
        if scan.vsn != m["node"]:
            self.skip(scan, "other_node", f"a scan of {scan.vsn}; this model was trained for {m['node']}")
            return
        t0 = time.perf_counter()
        x, t, present = self.frames(scan)
        if not present.any():
            self.skip(scan, "no_usable_preset", "no preset of this scan could be used")
            return
        t1 = time.perf_counter()
        z = np.zeros((P, self.model.mean.size), np.float32)
        z[present] = self.model.encode(x, t)
        t2 = time.perf_counter()
        solar_hour, sun_elev, day = self.clock(scan.time_ns)
        self.context.append((scan.time_ns, day, z, present))
        while self.context[0][0] < scan.time_ns - (self.T - 1) * self.step_ns - self.tol_ns:
            self.context.popleft()
        now = self.model.cloud(z)
        self.send_cloud("sagecast.cloud.nowcast", now, present, 0.0, scan.time_ns)
        if self.publish_coverage:
            self.publish(COVERAGE_NAME, float(now[present].mean()), {**self.meta}, scan.time_ns)
        ctx = self.pick_context(scan.time_ns, day)
        if ctx is not None:
            dt_min = np.array([(c[0] - scan.time_ns) / 60e9 for c in ctx])
            forecast = self.model.forecast(np.stack([c[2] for c in ctx]), np.stack([c[3] for c in ctx]), dt_min,
                                           solar_hour, sun_elev)
            cloud = self.model.cloud(forecast)  # (H, P)
            for h, minutes in enumerate(self.model.horizons):
                self.send_cloud("sagecast.cloud.forecast", cloud[h], np.ones(P, bool), minutes, scan.time_ns)
        t3 = time.perf_counter()
        for name, seconds in (("preprocess", t1 - t0), ("encode", t2 - t1), ("forecast", t3 - t2)):
            self.publish(f"sagecast.time.{name}", float(seconds), dict(self.meta), scan.time_ns)

    def send_cloud(self, name: str, values: np.ndarray, present: np.ndarray, horizon: float, time_ns: int) -> None:
        meta = {**self.meta, "horizon_min": f"{horizon:g}"}
        for pos, value, ok in zip(self.model.presets, values, present, strict=True):
            if ok:
                self.publish(name, float(value), {**meta, "position": str(pos)}, time_ns)
        self.publish(name, float(values[present].mean()), {**meta, "position": "all"}, time_ns)

    def run(self, scans: Iterable[Scan]) -> int:
        """Every scan, whatever goes wrong with one; returns how many were processed."""
        n = 0
        for scan in scans:
            try:
                self.process(scan)
            except Exception as e:  # one scan must never end the loop; the reason is published instead
                self.skip(scan, "error", f"{type(e).__name__}: {e}")
            n += 1
        return n


def waggle_publisher(plugin) -> Publish:
    return lambda name, value, meta, ts: plugin.publish(name, value, meta=meta, timestamp=ts)


def drain(plugin, timeout_s: float) -> None:
    """Wait until pywaggle's publisher thread has taken every message (it sends the rest when the with block
    ends, but only over a connection it already has); offline (PYWAGGLE_LOG_DIR) there is no broker."""
    if os.environ.get("PYWAGGLE_LOG_DIR"):
        return
    end = time.monotonic() + timeout_s
    while not plugin.send.empty() and time.monotonic() < end:
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> None:
    import argparse

    from waggle.plugin import Plugin

    ap = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model folder from sagecast-edge-export")
    ap.add_argument("--source", choices=("dir", "subscribe"), default="dir",
                    help="dir: replay a raw folder; subscribe: the scanner's upload messages")
    ap.add_argument("--raw", help="--source dir: raw folder (RAW/<VSN>/{rgb,thermal}/), as sagecast-download writes")
    ap.add_argument("--publish-coverage", action="store_true",
                    help=f"also publish the all-sky nowcast as {COVERAGE_NAME}")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime threads")
    ap.add_argument("--storage-url", default=SAGE_STORAGE, help="--source subscribe: storage the files come from")
    ap.add_argument("--flush-after-s", type=float, help="--source subscribe: close the open scan after this long "
                                                        "without a message (default: the model's scan gap)")
    ap.add_argument("--max-scans", type=int, default=0, help="--source subscribe: stop after this many (0 = never)")
    ap.add_argument("--drain-timeout-s", type=float, default=30.0, help="at the end, wait this long for the broker")
    args = ap.parse_args(argv)
    try:
        model = EdgeModel(args.model, threads=args.threads)
    except ModelError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.source == "dir" and not (args.raw and Path(args.raw).is_dir()):
        print(f"{PROG}: error: --source dir needs --raw DIR (an existing folder); got {args.raw!r}", file=sys.stderr)
        raise SystemExit(2)
    with Plugin() as plugin:
        app = Nowcaster(model, waggle_publisher(plugin), publish_coverage=args.publish_coverage)
        if args.source == "dir":
            scans = scans_in(stored_files(Path(args.raw)), model.manifest["scan_gap_s"])
        else:
            scans = subscribed_scans(plugin, model.manifest["scan_gap_s"], storage_url=args.storage_url,
                                     flush_after_s=args.flush_after_s, max_scans=args.max_scans)
        n = app.run(scans)
        drain(plugin, args.drain_timeout_s)
    print(f"{PROG}: {n} scans processed", file=sys.stderr)


if __name__ == "__main__":
    main()
