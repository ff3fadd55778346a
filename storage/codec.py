"""Layouts <-> named columns of numbers, and the state dtypes they are stored in.

Both shard formats store the same thing: a dict of numpy columns that share a leading row axis (one
row = one segment or one pair). This module maps `Segments`/`Pairs` to such columns and back, and
encodes state arrays in the stored dtype:

* float32, float16: as is (float16 <-> float32 round trips bit-exactly for float16 inputs);
* bfloat16: the top 16 bits of float32, rounded to nearest even, stored as uint16;
* int8: symmetric per-row quantisation, q = rint(x / scale) with scale = max|x| / 127 (float32,
  stored in a `<name>_scale` column), decoded as q * scale.
"""
from __future__ import annotations

import numpy as np

from storage.schema import Pairs, Segments

STATE_DTYPES = ("float32", "float16", "bfloat16", "int8")
_STORED = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16, "int8": np.int8}


def check_dtype(dtype: str) -> str:
    if dtype not in STATE_DTYPES:
        raise ValueError(f"state dtype {dtype!r} is not supported; choose one of {STATE_DTYPES}")
    return dtype


def encode_states(x: np.ndarray, dtype: str, name: str) -> dict[str, np.ndarray]:
    """Encode float states [..., Z] as the columns {name: data[, name_scale: scale]}."""
    check_dtype(dtype)
    if not np.isfinite(x).all():
        raise ValueError(f"{name} holds NaN or inf; refusing to store non-finite teacher states")
    if dtype == "float32":
        out = {name: np.ascontiguousarray(x, dtype=np.float32)}
    elif dtype == "float16":
        with np.errstate(over="ignore"):  # overflow is reported below, with the fix
            h = np.ascontiguousarray(x, dtype=np.float16)
        if not np.isfinite(h).all():
            raise ValueError(f"{name} overflows float16 (|x| > 65504); store it as bfloat16 or float32")
        out = {name: h}
    elif dtype == "bfloat16":
        u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
        rounded = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
        out = {name: rounded.astype(np.uint16)}
    else:
        x32 = np.asarray(x, dtype=np.float32)
        scale = (np.abs(x32).max(axis=-1) / np.float32(127.0)).astype(np.float32)
        safe = np.where(scale > 0, scale, np.float32(1.0))[..., None]
        q = np.clip(np.rint(x32 / safe), -127, 127).astype(np.int8)
        out = {name: q, f"{name}_scale": scale}
    return out


def decode_states(cols: dict[str, np.ndarray], dtype: str, name: str) -> np.ndarray:
    """Inverse of encode_states. float16/float32 come back in their own dtype; bf16 and int8 as float32."""
    data = cols[name]
    if dtype in ("float32", "float16"):
        return data
    if dtype == "bfloat16":
        return (data.astype(np.uint32) << np.uint32(16)).view(np.float32)
    return data.astype(np.float32) * cols[f"{name}_scale"][..., None]


def _state_names(layout: str) -> tuple[str, ...]:
    return ("states",) if layout == "segments" else ("state_in", "state_out")


def to_columns(obj: Segments | Pairs, dtype: str) -> dict[str, np.ndarray]:
    """Columns (in a fixed order) that store `obj` with states in `dtype`."""
    if isinstance(obj, Segments):
        cols = encode_states(obj.states, dtype, "states")
        cols.update(tokens=obj.tokens, y=obj.y, seq=obj.seq, pos0=obj.pos0)
    elif isinstance(obj, Pairs):
        cols = encode_states(obj.state_in, dtype, "state_in")
        cols.update(encode_states(obj.state_out, dtype, "state_out"))
        cols.update(tokens=obj.tokens, y=obj.y, seq=obj.seq, pos=obj.pos)
        if obj.drift is not None:
            cols["drift"] = obj.drift
    else:
        raise TypeError(f"expected Segments or Pairs, got {type(obj).__name__}")
    return {k: np.ascontiguousarray(v) for k, v in cols.items()}


def column_spec(layout: str, dtype: str, S: int, Z: int, drift: bool = False) -> dict[str, tuple]:
    """Expected {column: (numpy dtype, per-row shape)} for a shard; readers check against it."""
    st = np.dtype(_STORED[check_dtype(dtype)])
    spec: dict[str, tuple] = {}
    if layout == "segments":
        spec["states"] = (st, (S + 1, Z))
        if dtype == "int8":
            spec["states_scale"] = (np.dtype(np.float32), (S + 1,))
        spec.update(tokens=(np.dtype(np.int32), (S,)), y=(np.dtype(np.int32), (S,)),
                    seq=(np.dtype(np.int64), ()), pos0=(np.dtype(np.int64), ()))
    elif layout == "pairs":
        for name in _state_names(layout):
            spec[name] = (st, (Z,))
            if dtype == "int8":
                spec[f"{name}_scale"] = (np.dtype(np.float32), ())
        spec.update(tokens=(np.dtype(np.int32), ()), y=(np.dtype(np.int32), ()),
                    seq=(np.dtype(np.int64), ()), pos=(np.dtype(np.int64), ()))
        if drift:
            spec["drift"] = (np.dtype(np.float32), ())
    else:
        raise ValueError(f"unknown layout {layout!r}; expected one of segments, pairs")
    return spec


def expected_columns(layout: str, dtype: str, S: int, Z: int,
                     n: int) -> tuple[dict[str, tuple[np.dtype, tuple[int, ...]]], frozenset[str]]:
    """({column: (dtype, full shape)}, optional column names) a shard of n rows must hold: what a reader
    checks a shard's own metadata against before decoding it (`ShardFormat.read(files, expect, optional)`)."""
    pairs = layout == "pairs"
    spec = column_spec(layout, dtype, S, Z, drift=pairs)
    return {k: (dt, (int(n), *shape)) for k, (dt, shape) in spec.items()}, frozenset({"drift"} if pairs else ())


def check_columns(cols: dict[str, np.ndarray], layout: str, dtype: str, S: int, Z: int,
                  n: int) -> None:
    """Raise ValueError if the columns differ from the spec in names, dtypes, shapes or finiteness."""
    spec = column_spec(layout, dtype, S, Z, drift="drift" in cols)
    if set(cols) != set(spec):
        raise ValueError(f"columns {sorted(cols)} differ from the expected {sorted(spec)}")
    for name, (dt, shape) in spec.items():
        a = cols[name]
        if a.dtype != dt or a.shape != (n, *shape):
            raise ValueError(f"column {name} is {a.dtype}{list(a.shape)}, expected {dt}{[n, *shape]}")
    for name in _state_names(layout):
        if not _all_finite(cols[f"{name}_scale"] if dtype == "int8" else cols[name], dtype):
            raise ValueError(f"column {name} holds NaN or inf")


def _all_finite(a: np.ndarray, dtype: str) -> bool:
    # float16 arithmetic is emulated in numpy; testing the exponent bits as integers is ~5x faster.
    if dtype in ("float16", "bfloat16"):
        mask = np.uint16(0x7C00 if dtype == "float16" else 0x7F80)
        return not ((a.view(np.uint16) & mask) == mask).any()
    return bool(np.isfinite(a).all())


def from_columns(cols: dict[str, np.ndarray], layout: str, dtype: str) -> Segments | Pairs:
    """Rebuild the layout object from checked columns."""
    if layout == "segments":
        return Segments(states=decode_states(cols, dtype, "states"), tokens=cols["tokens"], y=cols["y"],
                        seq=cols["seq"], pos0=cols["pos0"])
    return Pairs(state_in=decode_states(cols, dtype, "state_in"), tokens=cols["tokens"],
                 state_out=decode_states(cols, dtype, "state_out"), y=cols["y"], seq=cols["seq"],
                 pos=cols["pos"], drift=cols.get("drift"))
