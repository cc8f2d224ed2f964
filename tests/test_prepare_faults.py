"""data.prepare under kills, a second writer, a full disk and corrupt files (issue 27): a prepared folder is
either complete (its complete.json matches its files) or refused with one line naming `sagecast-prepare`.

Run: `python -m pytest tests/test_prepare_faults.py -q`
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import data.prepare.run as prep
from data.prepare.outputs import COMPLETE, require_complete
from sagecast_common.cli import UserError
from tests.test_prepare import NOON, assert_same_outputs, capture, run

REPO = Path(__file__).resolve().parents[1]
KILLED = 137  # what a SIGKILLed process reports


@pytest.fixture
def grown(tmp_path):
    """A complete prepared folder of 4 days, and its raw folder with 2 days more: an incremental rerun's case."""
    raw, out = tmp_path / "raw", tmp_path / "old"
    for k in range(4):
        capture(raw, NOON + pd.Timedelta(days=k), 1)
    run(raw, out)
    for k in range(4, 6):
        capture(raw, NOON + pd.Timedelta(days=k), 5)
    return raw, out


def outputs(out: Path) -> dict[str, bytes]:
    """Every output file's bytes (not the cache, the run log, the lock or a killed run's temporaries)."""
    return {rel: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()
            and not (rel := p.relative_to(out).as_posix()).startswith(("cache/", "runs.jsonl", "."))}


def main_exit(capsys, argv) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        prep.main(argv)
    return e.value.code, capsys.readouterr().err


def killed_at_rename(raw: Path, out: Path, k: int) -> int:
    """Run prepare on `out` in a forked child that dies like a SIGKILL (os._exit: no cleanup, no finally)
    just before its k-th rename; the child's exit status (KILLED, or 0 when it had fewer renames)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        calls, real = [0], os.replace

        def replace(src, dst):
            calls[0] += 1
            if calls[0] == k:
                os._exit(KILLED)
            real(src, dst)

        os.replace = replace
        try:
            run(raw, out)
        except BaseException:
            os._exit(1)
        os._exit(0)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_a_kill_at_every_rename_of_an_incremental_run_leaves_the_old_folder_or_a_refused_one(grown, tmp_path):
    raw, old = grown
    before = outputs(old)
    run(raw, tmp_path / "fresh")
    seen = []
    for k in range(1, 40):
        out = tmp_path / f"k{k}"
        shutil.copytree(old, out)
        status = killed_at_rename(raw, out, k)
        if status == 0:
            break
        assert status == KILLED, f"the child failed at rename {k} for another reason"
        try:
            require_complete(out)
        except UserError as e:
            assert f"sagecast-prepare --raw {raw.resolve()} --out {out}" in str(e) and "\n" not in str(e)
            seen.append("refused")
        else:  # accepted: then it must be the old folder, byte for byte
            assert outputs(out) == before, k
            seen.append("old")
        run(raw, out)  # the rerun repairs it
        assert_same_outputs(out, tmp_path / "fresh")
        require_complete(out)
    else:
        raise AssertionError("the run never finished")
    # the run renames new cache entries first (old folder intact), then commits (refused until the record)
    assert seen[:2] == ["old", "old"] and "refused" in seen and seen[-1] == "refused", seen
    assert seen == sorted(seen, key=["old", "refused"].index), "once refused, refused until the record"


def test_a_folder_without_its_record_or_with_a_changed_file_is_refused_naming_the_repair(grown, capsys):
    from data import PairedSkyDataset

    raw, out = grown
    assert len(PairedSkyDataset(out, None, day_only=False)) == 4
    (out / COMPLETE).unlink()  # as a folder prepared before records existed
    with pytest.raises(UserError, match=rf"no completion record.*`sagecast-prepare --raw {raw.resolve()} "
                                        rf"--out {out}` \(incremental"):
        PairedSkyDataset(out, "train")
    run(raw, out)
    assert len(PairedSkyDataset(out, None, day_only=False)) == 6
    stats = json.loads((out / "norm_stats.json").read_text())
    (out / "norm_stats.json").write_text(json.dumps({**stats, "thermal_std": 1.0}) + "\n")
    with pytest.raises(UserError, match=r"norm_stats.json does not match the completion record"):
        PairedSkyDataset(out, "train")
    with pytest.raises(UserError, match="holds no prepared data"):
        PairedSkyDataset(out / "nothing", "train")


@pytest.mark.parametrize("damage", ["truncated rgb.npy", "garbage index.parquet", "garbage norm_stats.json",
                                    "garbage complete.json"])
def test_corrupt_prepared_files_are_one_line_errors_naming_the_file(grown, damage):
    from data import PairedSkyDataset
    from data.dataset import normalised_frames

    _, out = grown
    name = damage.split()[1]
    data = (out / name).read_bytes()
    (out / name).write_bytes(data[:len(data) // 2] if damage.startswith("truncated") else b"\x00garbage" * 9)
    with pytest.raises(UserError) as e:
        PairedSkyDataset(out, None)
    assert str(e.value).startswith(str(out / name)) and "\n" not in str(e.value)
    assert "sagecast-prepare --raw" in str(e.value)
    if name in ("rgb.npy", "norm_stats.json"):  # stage 2 reads the arrays without the record: still one line
        with pytest.raises(UserError, match=name.replace(".", r"\.") + " is (not a readable array|unreadable)"):
            normalised_frames(out, np.arange(2))


def test_a_second_prepare_on_the_same_folder_exits_2_naming_the_first_ones_pid(grown, capsys):
    raw, out = grown
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from data.folder_lock import folder_lock\n"
                               "with folder_lock(sys.argv[1], tool='sagecast-prepare'):\n"
                               "    print('locked', flush=True); time.sleep(120)", str(out)],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        code, err = main_exit(capsys, ["--raw", str(raw), "--out", str(out), "--workers", "1", "--no-progress"])
        assert code == 2 and err.count("\n") == 1
        assert f"being written by another sagecast-prepare (PID {holder.pid})" in err
        require_complete(out)  # the refused writer touched nothing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    assert run(raw, out)["pairs"] == 6  # a killed holder leaves no stale lock


def test_free_space_is_checked_before_anything_is_written(grown, capsys, monkeypatch):
    raw, out = grown
    before = outputs(out)
    entries = sorted((out / "cache").rglob("*"))
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 5000, 5000))
    code, err = main_exit(capsys, ["--raw", str(raw), "--out", str(out), "--size", "16", "--workers", "1",
                                   "--no-progress"])
    assert code == 2 and err.count("\n") == 1 and "not enough disk space" in err and "0.00 GB are free" in err
    assert sorted((out / "cache").rglob("*")) == entries, "nothing decoded"
    assert outputs(out) == before and require_complete(out)


@pytest.mark.parametrize("where", ["reserving the arrays", "writing the index"])
def test_a_disk_that_fills_while_writing_is_one_line_no_temporaries_and_the_old_folder(grown, capsys, monkeypatch,
                                                                                      where):
    raw, out = grown
    before = outputs(out)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "reserving the arrays":  # what the memory-mapped arrays hit instead of a SIGBUS
        monkeypatch.setattr(os, "posix_fallocate", full)
    else:
        monkeypatch.setattr(pd.DataFrame, "to_parquet", full)
    code, err = main_exit(capsys, ["--raw", str(raw), "--out", str(out), "--size", "16", "--workers", "1",
                                   "--no-progress"])
    assert code == 2 and err.count("\n") == 1 and "disk full while writing" in err
    assert not list(out.glob(".*tmp")) and not (out / ".pairs.new").exists()
    assert outputs(out) == before and require_complete(out)
    monkeypatch.undo()
    assert run(raw, out)["pairs"] == 6


def test_a_corrupt_registry_is_one_line_exit_2_for_prepare_and_nodes(grown, tmp_path, capsys):
    from data.sage import nodes

    raw, out = grown
    registry = tmp_path / "nodes.json"
    text = (REPO / "data" / "sage" / "nodes.json").read_text()
    registry.write_text(text[:len(text) // 2])  # cut short, as by a full disk
    code, err = main_exit(capsys, ["--raw", str(raw), "--out", str(out), "--registry", str(registry)])
    assert code == 2 and err.count("\n") == 1 and f"node registry {registry} cannot be read as JSON" in err
    require_complete(out)
    with pytest.raises(SystemExit) as e:
        nodes.main(["show", "W056", "--registry", str(registry)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and str(registry) in err
