"""Vectorised parser for the thermal CSV body: `height` lines of `width` `;`-separated decimals.

`np.loadtxt` spends ~200 ns per value in a generic C tokenizer. Here every token is at most 8 bytes of
`-`, digits and one `.` (the plugin prints ≤ 6 significant digits), so each token is loaded as one uint64
and turned into its integer mantissa with three SWAR multiply-shift steps; dividing by the exact power of
ten then gives the correctly rounded double, i.e. the value `np.loadtxt` returns. Work goes in blocks of
lines so temporaries stay small and are reused instead of freshly mapped (page faults dominate otherwise).
Anything else (exponents, `nan`, long tokens, `\r`, wrong counts) returns None and the caller takes the
slow path, which reports the offending line.
"""

from __future__ import annotations

import numpy as np

_U = np.uint64
_DIVISOR = np.array([1.0, *10.0 ** np.arange(8)])  # by dot rank (0 = no dot): 10 ** digits after the dot
_SIGN = np.array([1.0, -1.0])
_LOW_BITS = _U(0x0101010101010101)
_DOT_RANK = _U(0x0807060504030201)  # (1 << 8j) * this >> 56 == 8 - j
_BLOCK_VALUES = 8192
_SEMI, _NL = ord(";"), ord("\n")


def parse_grid(raw: bytes, start: int, width: int, height: int) -> np.ndarray | None:
    """float64 (height, width) from raw[start:], or None if that is not the plain expected form."""
    end = len(raw)
    while end > start and raw[end - 1] in b" \t\r\n":
        end -= 1
    if start < 8 or end <= start or raw.count(b"\n", start, end) != height - 1:
        return None  # start >= 8: the header precedes the data, so every 8-byte window is in the buffer
    data = np.frombuffer(raw, np.uint8)
    windows = np.ndarray((len(raw) - 7,), _U, raw, 0, (1,))  # the 8 bytes from each offset (unaligned)
    out = np.empty((height, width))
    lines = max(1, _BLOCK_VALUES // width)
    lo = start
    for row in range(0, height, lines):
        hi = lo
        for _ in range(min(lines, height - row)):
            hi = raw.find(b"\n", hi, end) + 1 or end + 1  # one past this line's newline (or the data end)
        ends = _token_ends(data, lo, min(hi, end), width)
        if ends is None or ends.size != width * min(lines, height - row):
            return None
        values = _parse_tokens(windows, ends, lo - 1)
        if values is None:
            return None
        out[row:row + lines] = values.reshape(-1, width)
        lo = hi
    return out


def _token_ends(data: np.ndarray, lo: int, hi: int, width: int) -> np.ndarray | None:
    """Offsets just past each token in data[lo:hi] (whole lines); None if a byte is not allowed."""
    a = data[lo:hi]
    shifted = a - np.uint8(45)  # '-' '.' '/' '0'..'9' ':' ';' -> 0..14
    if not np.all(((shifted <= 14) & (shifted != 2) & (shifted != 13)) | (a == _NL)):
        return None
    ends = np.nonzero((a == _SEMI) | (a == _NL))[0] + lo
    if hi == len(data) or data[hi - 1] != _NL:
        ends = np.append(ends, hi)  # the last line of the data has no newline after it
    if not np.all(data[ends[width - 1::width][:-1]] == _NL):
        return None
    return ends


def _parse_tokens(windows: np.ndarray, ends: np.ndarray, before_first: int) -> np.ndarray | None:
    length = np.diff(ends, prepend=before_first) - 1
    if length.min() < 1 or length.max() > 8:
        return None
    first = np.left_shift(_U(1), ((8 - length) * 8).astype(_U))  # the token's first byte in its window
    w = windows[ends - 8] & -first  # drop the bytes of the previous token
    digit_mask = (w >> _U(4)) & _LOW_BITS  # bit 4 is set in '0'-'9', clear in '-', '.' and padding
    mark = (w >> _U(5)) & ~(w >> _U(4)) & _LOW_BITS  # '-' or '.'
    dot, minus = mark & ~w, mark & w
    if not digit_mask.all() or np.any(dot & (dot - _U(1))) or np.any((minus != 0) & (minus != first)):
        return None  # a token without digits, with two dots, or with '-' after its first byte
    digits = w & (digit_mask * _U(15))
    before_dot = (dot - _U(1)) * (dot != 0)
    digits = ((digits & before_dot) << _U(8)) | (digits & ~before_dot)  # close the dot's gap
    digits = (digits * _U(2561)) >> _U(8)
    digits = ((digits & _U(0x00FF00FF00FF00FF)) * _U(6553601)) >> _U(16)
    digits = ((digits & _U(0x0000FFFF0000FFFF)) * _U(42949672960001)) >> _U(32)
    values = digits.astype(np.float64)
    values /= _DIVISOR[(dot * _DOT_RANK) >> _U(56)]
    values *= _SIGN[(minus != 0).view(np.uint8)]
    return values
