"""read_thermal_csv: same values as np.loadtxt (fast and fallback paths), errors that name file and line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data.formats import ThermalFormatError, format_thermal_csv, read_thermal_csv

REAL = Path(__file__).parents[2] / "shared" / "samples" / "mobotix-m73" / \
    "stream_000001_left_640x480_14bit.thermal.celsius.csv"
HEADER = ("sensor;right\nbit depth;14 bit\nwidth;{w}\nheight;{h}\nresolution;high\n"
          "advanced radiometry support;yes\nunit;degrees Celsius\n\n")


def loadtxt(path) -> np.ndarray:
    return np.loadtxt(path, delimiter=";", skiprows=8, ndmin=2).astype(np.float32)


@pytest.mark.parametrize("shape", [(252, 336), (84, 112), (3, 4), (1, 1)])
def test_equals_loadtxt_on_generated_files_with_negatives(tmp_path, shape):
    rng = np.random.default_rng(shape[0])
    celsius = rng.uniform(-75, 45, shape)
    celsius.flat[::7] = np.round(celsius.flat[::7])  # integer tokens such as "-40" and "31"
    path = tmp_path / "t.csv"
    path.write_text(format_thermal_csv(celsius))
    got = read_thermal_csv(path)
    assert got.dtype == np.float32 and got.shape == shape
    assert (got < 0).any() and np.array_equal(got, loadtxt(path).reshape(shape))


def test_unusual_but_valid_numbers_take_the_fallback_path(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes((HEADER.format(w=3, h=2) + "1e-05;-0.04;+3\r\n-273.15;.5;12345.678\r\n").encode())
    assert np.array_equal(read_thermal_csv(path), loadtxt(path))


@pytest.mark.skipif(not REAL.exists(), reason="shared/samples/mobotix-m73 not present")
def test_equals_loadtxt_on_the_real_640x480_file():
    got = read_thermal_csv(REAL)
    assert got.shape == (480, 640) and np.array_equal(got, loadtxt(REAL))


@pytest.mark.parametrize("body, message", [
    ("1;2;3\n4;5;6\n", "expected 3 data rows, found 2 (line 11"),
    ("1;2;3\n4;5\n7;8;9\n", "line 10 has 2 values, expected 3"),
    ("1;2;3\n4;5;6;7\n7;8;9\n", "line 10 has 4 values, expected 3"),
    ("1;2;3\n4;x;6\n7;8;9\n", "line 10: not a number: 'x'"),
    ("1;2;3\n4;5;6\n7;;9\n", "line 11: not a number: ''"),
    ("1;2;3\n4;nan;6\n7;8;9\n", "line 10: non-finite value"),
    ("1;2;3\n4;1e308;6\n7;8;9\n", "line 10: 1e+308 does not fit a float32"),
    ("1;2;3\n4;5;6\n7;8;9\n1;2;3\n", "more than 3 data rows (line 12)"),
    ("1;2;3\n4;5;6\n7;8;9-\n", "line 11: not a number: '9-'"),
    ("1;2;3\n4;5;6\n7;8;1.2.3\n", "line 11: not a number: '1.2.3'"),
])
def test_bad_files_name_file_and_line(tmp_path, body, message):
    path = tmp_path / "bad.csv"
    path.write_text(HEADER.format(w=3, h=3) + body)
    with pytest.raises(ThermalFormatError) as err:
        read_thermal_csv(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_header_claiming_a_huge_frame_is_refused_before_allocating(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(HEADER.format(w=1_000_000, h=1_000_000) + "1;2\n")
    with pytest.raises(ThermalFormatError, match=r"must be 1\.\.4096 \(got 1000000x1000000\)"):
        read_thermal_csv(path)


def test_header_without_size_is_refused(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("sensor;right\nunit;degrees Celsius\n\n1;2\n")
    with pytest.raises(ThermalFormatError, match="lacks integer width/height"):
        read_thermal_csv(path)


# --- the compiled fast path (data.prepare.thermal_parse.parse_grid) on its own -----------------------------------

EDGE_TOKENS = ["0", "-0", "5.", "-5.", ".5", "-.5", "0.04", "-273.15", "382.21", "00012.5", "-00.040", "31",
               "1234567", "-1234567", "12345678", "1234567.8", "-123456.78",  # 8 bytes: no separator in reach
               "123456789012345", "-1234567890.12345", ".000000000000001", "99999999.99"]


def _grid_bytes(rows: list[list[str]], tail: str = "\n") -> bytes:
    return HEADER.format(w=len(rows[0]), h=len(rows)).encode() + ("\n".join(map(";".join, rows)) + tail).encode()


@pytest.mark.parametrize("tail", ["", "\n", "\n\n", " \r\n"])
def test_fast_path_matches_float_bit_for_bit_on_edge_tokens(tail):
    from data.prepare.thermal_parse import parse_grid

    rng = np.random.default_rng(3)
    tokens = EDGE_TOKENS + [f"{v:.2f}" for v in rng.uniform(-80, 60, 43)]
    rows = [tokens[i:i + 8] for i in range(0, 64, 8)]
    raw = _grid_bytes(rows, tail)
    got = parse_grid(raw, len(HEADER.format(w=8, h=8)), 8, 8)
    want = np.array([[float(v) for v in row] for row in rows]).astype(np.float32)
    assert got is not None, "plain tokens must not need the slow path"
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))  # also tells -0.0 from 0.0


@pytest.mark.parametrize("token", ["", "-", ".", "-.", "1.2.3", "1-2", "--5", "+5", "1e5", "nan", " 5", "1,5",
                                   "5/", "1234567890123456"])
@pytest.mark.parametrize("where", [0, 13, 15])  # first value, middle, last value of the body
def test_fast_path_refuses_anything_not_plain(token, where):
    from data.prepare.thermal_parse import parse_grid

    tokens = [f"{v}.25" for v in range(16)]
    tokens[where] = token
    rows = [tokens[:4], tokens[4:8], tokens[8:12], tokens[12:]]
    raw = _grid_bytes(rows)
    assert parse_grid(raw, len(HEADER.format(w=4, h=4)), 4, 4) is None


@pytest.mark.parametrize("body, width, height", [
    ("1;2\n3", 2, 2), ("1;2;3\n4;5", 3, 2), ("1;2\n3;4\n5;6", 2, 2), ("1;2\n3;4", 2, 3),
    ("1;2;\n3;4", 2, 2), ("1\n\n2", 1, 2), ("1;2\r\n3;4", 2, 2), ("1\n2;3\n4", 2, 2),
])
def test_fast_path_refuses_wrong_counts_and_separators(body, width, height):
    from data.prepare.thermal_parse import parse_grid

    assert parse_grid(b"12345678" + body.encode(), 8, width, height) is None
