"""One LMDB value: a safetensors dict. Its zero-copy parser, its serialiser and its check.

The reader, the verification and the encoder's resume all parse values with
:func:`safetensors_views` (no copy of the value or its arrays), and every value is written by
:func:`encode_value`, so there is one definition of what a valid value is.
"""

from __future__ import annotations

import functools
import json
import math
from typing import Final

import numpy as np
import safetensors.numpy

from splml.io.reben.format import (
    CLC_TO_CLASS,
    REFERENCE_MAP_TENSOR,
    UNLABELED_CLC,
    VALUE_RANGES,
    VALUE_UNITS,
    KeyKind,
    expected_tensors,
)

#: Every CLC code a reference map may legitimately contain.
VALID_CLC_CODES: Final[np.ndarray] = np.array(sorted(set(CLC_TO_CLASS) | set(UNLABELED_CLC)), dtype=np.int64)

#: safetensors dtype names of the arrays a reBEN value may hold.
_SAFETENSORS_DTYPES = {"U8": np.uint8, "U16": np.uint16, "I16": np.int16, "I32": np.int32, "F16": np.float16,
                       "F32": np.float32, "F64": np.float64}  # fmt: skip


def encode_value(tensors: dict[str, np.ndarray]) -> bytes:
    """Serialise one value (``{tensor name: array}``) as the reBEN LMDB stores it."""
    return safetensors.numpy.save(tensors)


def safetensors_views(value: bytes | memoryview) -> dict[str, np.ndarray]:
    """Parse a serialized safetensors dict into read-only numpy views of its bytes (no copy).

    The format: an 8-byte little-endian header length, a JSON header mapping each name to its
    ``dtype``, ``shape`` and ``data_offsets`` (relative to the end of the header), then the raw
    little-endian bytes. Gives the same arrays as ``safetensors.numpy.load(bytes(value))``
    (tested) without copying the value or the arrays; raises ValueError on a malformed value.
    """
    buf = memoryview(value)
    if len(buf) < 8:
        raise ValueError(f"{len(buf)} bytes, shorter than the 8-byte header length")
    header_len = int.from_bytes(buf[:8], "little")
    if header_len > len(buf) - 8:
        raise ValueError(f"header length {header_len} exceeds the value's {len(buf) - 8} bytes")
    data = buf[8 + header_len :]
    layout = _header_layout(bytes(buf[8 : 8 + header_len]))
    described = layout[-1][4] if layout else 0
    if described != len(data):  # as safetensors itself: the tensors cover the data exactly
        raise ValueError(f"the header describes {described} data bytes, the value has {len(data)}")
    return {
        name: np.frombuffer(data[start:end], dtype=dtype).reshape(shape) for name, dtype, shape, start, end in layout
    }


@functools.lru_cache(maxsize=256)
def _header_layout(header_bytes: bytes) -> tuple[tuple[str, np.dtype, tuple[int, ...], int, int], ...]:
    """(name, dtype, shape, start, end) per tensor, ordered by end offset.

    Cached: every patch of a dataset has the same header (same names, shapes and offsets), so
    the JSON is parsed once per distinct header rather than once per read.
    """
    try:
        header = json.loads(header_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")  # noqa: TRY004 -- callers catch ValueError for any malformed value
    layout = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]]).newbyteorder("<")
            shape = tuple(int(d) for d in info["shape"])
            start, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"tensor {name!r}: bad header entry {info!r}") from exc
        if not 0 <= start <= end or end - start != dtype.itemsize * math.prod(shape):
            raise ValueError(f"tensor {name!r}: offsets {start}..{end} do not fit dtype {info['dtype']} shape {shape}")
        layout.append((name, dtype, shape, start, end))
    layout.sort(key=lambda t: t[4])
    previous_end = 0
    for name, _, _, start, end in layout:
        if start != previous_end:
            raise ValueError(
                f"tensor {name!r}: starts at byte {start}, after a gap or an overlap (expected {previous_end})"
            )
        previous_end = end
    return tuple(layout)


def value_problem(arr: np.ndarray, bounds: tuple[float, float] | None, modality: str) -> str | None:
    """What is wrong with the values of one band of ``modality`` ("s2"/"s1"), or None.

    Non-finite values, or values outside ``bounds`` (None: only finiteness is checked).
    Shared by the reader (on failure only: the hot path checks a min and a max), the
    verification and the encoder.
    """
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        return f"contains NaN or inf ({_pixels(int((~np.isfinite(arr)).sum()))})"
    if bounds is None or (arr.dtype.kind in "ui" and covers_dtype(bounds, arr.dtype)):
        return None
    low, high = bounds
    below, above = arr < low, arr > high
    count = int(below.sum() + above.sum())
    if not count:
        return None
    worst = arr[below].min() if below.any() else arr[above].max()
    return (
        f"has value {float(worst):g} outside value_range.{modality} [{low}, {high}] {VALUE_UNITS[modality]} "
        f"({_pixels(count)})"
    )


def _pixels(count: int) -> str:
    return f"{count} pixel{'s' if count != 1 else ''}"


def covers_dtype(bounds: tuple[float, float] | None, dtype: type) -> bool:
    """True when ``bounds`` admit every value of the integer ``dtype`` (no check needed)."""
    info = np.iinfo(dtype)
    return bounds is None or (bounds[0] <= info.min and bounds[1] >= info.max)


def invalid_map_codes(codes: np.ndarray) -> np.ndarray:
    """The values of a reference map that are not CORINE level-3 codes (empty when all are valid)."""
    return np.setdiff1d(np.unique(codes), VALID_CLC_CODES)


def check_value(
    kind: KeyKind, value: bytes | memoryview | None, value_range: dict[str, tuple[float, float] | None] = VALUE_RANGES
) -> str | None:
    """Parse one LMDB value and check it the way the reader will use it; the problem or None.

    Checks what can be checked without the sources: a valid safetensors dict with exactly the
    expected tensor names, each of the right shape and dtype, band values finite and inside
    ``value_range`` (resolved, as from :func:`~splml.io.reben.format.resolve_value_range`), map
    codes valid. A flipped pixel value inside a well-formed value cannot be seen here: that is
    what the comparison with the sources is for.
    """
    if value is None:
        return "missing key"
    try:
        arrays = safetensors_views(value)
    except ValueError as exc:
        return f"not a valid safetensors value ({exc})"
    expected = expected_tensors(kind)
    if set(arrays) != set(expected):
        return f"tensors {sorted(arrays)}, expected {sorted(expected)}"
    for name, (size, dtype) in expected.items():
        arr = arrays[name]
        if arr.shape != (size, size) or arr.dtype != dtype:
            return f"tensor {name}: expected {np.dtype(dtype).name} {size}x{size}, got {arr.dtype.name} {arr.shape}"
        if kind != "map" and (problem := value_problem(arr, value_range[kind], kind)):
            return f"tensor {name} {problem}"
    if kind == "map":
        invalid = invalid_map_codes(arrays[REFERENCE_MAP_TENSOR])
        if invalid.size:
            return f"map values {invalid[:10].tolist()} are not CORINE level-3 codes"
    return None


def same_arrays(value: bytes | memoryview, arrays: dict[str, np.ndarray]) -> bool:
    """True when the stored ``value`` holds exactly ``arrays`` (names, dtypes, shapes and bytes)."""
    stored = safetensors_views(value)
    return set(stored) == set(arrays) and all(
        stored[k].dtype == v.dtype and stored[k].shape == v.shape and stored[k].tobytes() == v.tobytes()
        for k, v in arrays.items()
    )
