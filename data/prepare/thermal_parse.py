"""Compiled parser for the thermal CSV body: `height` lines of `width` `;`-separated decimals.

`np.loadtxt` spends ~200 ns per value in a generic tokenizer. Here one pass, compiled by numba, reads each
token as an optional leading `-`, digits and at most one `.`; the digits form an exact integer mantissa
(≤ 15 digits, below 2**53), and dividing it by the exact power of ten gives the correctly rounded double,
i.e. the value `np.loadtxt` returns. Anything else (exponents, `nan`, spaces, `\\r`, wrong counts) makes it
return None, and the caller takes the slow path, which reports the offending line.

Speed: one pass in which the next token's start depends only on finding the next separator. Each
token is read as one little-endian uint64 (the 8 bytes from its start) and handled with SWAR (SIMD within
a register) bit tricks and no data-dependent branch: where the first `;`/`\n` is, whether the bytes before
it are digits with at most one `.`, the dot removed, the digits combined by three multiply-shifts. Tokens
with no separator within 8 bytes, and the last bytes of the body, go through a byte-by-byte loop.
(A plain byte loop mispredicts at almost every token end; a whole-array numpy SWAR took ~45 passes over
the data and reached only 6-8x np.loadtxt.)
"""

from __future__ import annotations

import numpy as np
from numba import njit

_MAX_DIGITS = 15  # every mantissa below 10**15 < 2**53 is an exact double
# Exact powers of ten, then their negatives: a value is mantissa / _DIVISORS[exponent + 16 * negative].
_DIVISORS = np.concatenate([10.0 ** np.arange(16), -(10.0 ** np.arange(16))])

_U = np.uint64
_ONES = _U(0x0101010101010101)  # 0x01 in every byte
_LOW7 = _U(0x7F7F7F7F7F7F7F7F)
_HIGH = _U(0x8080808080808080)  # bit 7 of every byte: where the per-byte answers below go
_SEMIS = _U(0x3B3B3B3B3B3B3B3B)
_NEWLINES = _U(0x0A0A0A0A0A0A0A0A)
_ZERO_CHARS = _U(0x3030303030303030)  # '0' in every byte: xor turns digits into 0..9 and '.' into 0x1E
_DOT_XOR = _U(0x1E1E1E1E1E1E1E1E)
_ABOVE_9 = _U(0x7676767676767676)  # 0x76 + byte reaches bit 7 from 10 up
_SEMI, _NL, _MINUS, _DOT = 59, 10, 45, 46


def parse_grid(raw: bytes, start: int, width: int, height: int) -> np.ndarray | None:
    """float32 (height, width) from raw[start:], or None if that is not the plain expected form."""
    end = len(raw)
    while end > start and raw[end - 1] in b" \t\r\n":
        end -= 1
    out = np.empty(width * height, np.float32)
    if end <= start or not _parse(np.frombuffer(raw, np.uint8, end - start, start), width, out, _DIVISORS):
        return None
    return out.reshape(height, width)


@njit(cache=True, nogil=True)
def _parse(body, width, out, divisors):  # pragma: no cover - compiled; tested through parse_grid
    """Fill `out` row by row from `body`; False if any token or separator is not plain."""
    size, n = body.size, out.size
    bad, column, i = _U(0), 0, 0
    for k in range(n):
        ends = _U(0)
        if i + 8 <= size:
            word = _load8(body, i)
            ends = _zero_bytes(word ^ _SEMIS) | _zero_bytes(word ^ _NEWLINES)
        if ends:
            length = _first_byte(ends)
            negative, mantissa, exponent, invalid = _token8(word, length)
            bad |= invalid
        else:
            length, negative, mantissa, exponent = _token_bytes(body, i)
            if length < 0:
                return False
        out[k] = mantissa / divisors[exponent + 16 * negative]
        i += length
        column += 1
        if k == n - 1:
            bad |= _U(i != size)
        elif column == width:  # a full row ends with '\n'
            column = 0
            bad |= _U(body[_U(i)] != _NL)
        else:
            bad |= _U(body[_U(i)] != _SEMI)
        i += 1
    return bad == 0


@njit(cache=True, inline="always")
def _load8(body, i):  # pragma: no cover - compiled
    """body[i:i+8] as a little-endian uint64. With unsigned indices numba adds no negative-index
    wraparound, and LLVM merges the 8 byte loads into one (20x faster than signed indices here)."""
    word = _U(0)
    for j in range(8):
        word |= _U(body[_U(i + j)]) << _U(8 * j)
    return word


@njit(cache=True, inline="always")
def _zero_bytes(x):  # pragma: no cover - compiled
    """Bit 7 set in exactly the bytes of x that are 0."""
    return ~(((x & _LOW7) + _LOW7) | x) & _HIGH


@njit(cache=True, inline="always")
def _first_byte(marks):  # pragma: no cover - compiled
    """Index of the lowest byte with bit 7 set in `marks` (nonzero): the count of bytes below it."""
    below = ((marks & (~marks + _U(1))) >> _U(7)) - _U(1)  # every bit of the bytes below
    return np.int64(((below & _ONES) * _ONES) >> _U(56))


@njit(cache=True, inline="always")
def _token8(word, length):  # pragma: no cover - compiled
    """(negative, mantissa, exponent, invalid) of the token in the low `length` (0..7) bytes of `word`:
    value = mantissa / 10**exponent. invalid is nonzero unless the token is an optional '-', then
    digits with at most one '.' among them."""
    negative = (word & _U(0xFF)) == _U(_MINUS)
    word >>= _U(8 * negative)
    length -= negative
    inside = (_U(1) << _U(8 * length)) - _U(1)  # the token's bytes
    t = (word ^ _ZERO_CHARS) & inside  # digits -> 0..9, '.' -> 0x1E, bytes past the token -> 0
    not_digit = (((t & _LOW7) + _ABOVE_9) | t) & _HIGH
    dots = _zero_bytes(t ^ _DOT_XOR)
    dot = dots >> _U(7)  # 0x01 in the dot's byte, or 0
    invalid = (not_digit & ~dots) | (dot & (dot - _U(1))) | _U(length - (dot != 0) < 1)
    # Drop the dot: the bytes after it move down one. Digits stay left-aligned (first digit in byte 0),
    # so the SWAR below reads them as followed by zeros: mantissa * 10**(8 - digits).
    before = dot - _U(1)  # the bytes before the dot; all bytes when there is none
    up_to_dot = (dot << _U(8)) - _U(1)  # 0 when there is none
    digits = (t & before) | ((t & ~up_to_dot) >> _U(8))
    dot_byte = np.int64(((before & _ONES) * _ONES) >> _U(56))  # 8 when there is none
    exponent = 8 - min(dot_byte, length)  # 8 - digits + decimals, either way
    digits = ((digits * _U(2561)) >> _U(8)) & _U(0x00FF00FF00FF00FF)  # 10 * a + b in each 16-bit lane
    digits = ((digits * _U(6553601)) >> _U(16)) & _U(0x0000FFFF0000FFFF)  # 100 * a + b per 32 bits
    digits = (digits * _U(42949672960001)) >> _U(32)  # 10000 * a + b
    return negative, np.int64(digits), exponent, invalid


@njit(cache=True)
def _token_bytes(body, i):  # pragma: no cover - compiled
    """(length, negative, mantissa, exponent) of the token at body[i:] up to the next ';', '\n' or the
    end, read byte by byte; length -1 if it is not an optional '-' then digits with at most one '.'."""
    start, size = i, body.size
    negative = i < size and body[i] == _MINUS
    i += negative
    mantissa, digits, decimals, dot = 0, 0, 0, False
    while i < size and body[i] != _SEMI and body[i] != _NL:
        c = body[i]
        if 48 <= c <= 57:  # '0'..'9'
            mantissa = mantissa * 10 + (c - 48)
            digits += 1
            decimals += dot
        elif c == _DOT and not dot:
            dot = True
        else:
            return -1, False, 0, 0
        i += 1
    if not 0 < digits <= _MAX_DIGITS:
        return -1, False, 0, 0
    return i - start, negative, mantissa, decimals
