"""The two on-disk shard formats, both storing named numpy columns plus a small JSON header.

* Zarr v3 (`shard-00042.zarr.zip`, one object): a Zarr v3 group with one array per column, stored as
  a zip of the store's files (the layout `zarr.storage.ZipStore` reads): the zip plays the part of the
  sharding codec, one object holding all chunks, one GET on S3 instead of two per column. Chunks
  hold ~`chunk_bytes` of rows, Blosc-lz4 compressed with byte shuffle (decodes several times faster
  than zstd; on Gaussian float16 zstd saved only ~8%). The zip is uncompressed (the chunks already
  are) with fixed member order, times and modes, so the bytes are a function of the data.
  Shards written before the zip layout are folders (`shard-00042.zarr/`, one sharding-codec file
  per column), listed file by file in the manifest; they are still read (a reader never lists: it
  fetches the listed files), never written.
* WebDataset tar (`shard-00042.tar`): `_shard.json` first, then blocks of rows as
  `<block:06d>.<column>.npy` entries (a `webdataset.WebDataset` pipeline yields one sample per block,
  keyed by column). Members carry fixed mtime/uid/gid/mode. Reading accepts only those names and
  loads them with `allow_pickle=False`; anything else refuses the shard.

Shards move as `dict[relative file name, bytes]`: one-object shards as `{"": bytes}`, folder shards
as one entry per file; `shard_sha256` hashes that deterministically. Each format is an object behind one
interface (`ShardFormat`: `write`, `read`, `verify`, `suffix`); `shard_format(name)` is the one place a
format name (`zarr`, `wds`: manifests, configs, the CLI) becomes one.
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import json
import re
import tarfile
import zipfile

import numpy as np

CHUNK_BYTES = 16 << 20
_TAR_MEMBER = re.compile(r"^(?:_shard\.json|(\d{6})\.([a-z0-9_]+)\.npy)$")
_ZARR_MEMBER = re.compile(r"^(?:zarr\.json|[a-z0-9_]+/(?:zarr\.json|c(?:/\d+)+))$")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip can hold: no clock in the bytes


def _rows_per_chunk(a: np.ndarray, chunk_bytes: int) -> int:
    # Split rows into equal chunks of at most ~chunk_bytes, so the last chunk is barely padded.
    n, row = a.shape[0], max(1, a[:1].nbytes)
    chunks = -(-n // max(1, chunk_bytes // row))
    return int(max(1, -(-n // chunks)))


def shard_sha256(files: dict[str, bytes]) -> str:
    """sha256 over (name, length, bytes) of every file in name order; a one-object shard is named ''."""
    if set(files) == {""}:
        return hashlib.sha256(files[""]).hexdigest()
    h = hashlib.sha256()
    for name in sorted(files):
        data = files[name]
        h.update(name.encode() + b"\0" + len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


class LayoutMismatch(ValueError):
    """A shard's own metadata (array shapes, dtypes, chunks, codecs, .npy headers) disagrees with what its
    manifest entry says it holds; raised before anything is decoded."""


Expect = dict[str, tuple[np.dtype, tuple[int, ...]]]
"""{column: (dtype, full shape)} a shard must hold, from its manifest entry (`codec.expected_columns`)."""


def _fmt(dtype, shape) -> str:
    """`float16[3, 5, 16]`; a byte order other than the native one is spelled out (`>f2[3]`)."""
    if not isinstance(dtype, str):
        dtype = np.dtype(dtype)
        dtype = dtype.name if dtype.isnative or dtype.itemsize == 1 else dtype.str
    return f"{dtype}{list(shape)}"


# ---- Zarr ------------------------------------------------------------------------------------------
def encode_zarr(cols: dict[str, np.ndarray], header: dict, chunk_bytes: int = CHUNK_BYTES) -> bytes:
    """The shard as one zip of a Zarr v3 store (see the module docstring)."""
    return zip_store(zarr_store(cols, header, chunk_bytes))


def zarr_store(cols: dict[str, np.ndarray], header: dict, chunk_bytes: int = CHUNK_BYTES) -> dict[str, bytes]:
    """The Zarr v3 store's files {key: bytes}: a group with one array per column.

    The metadata documents are zarr's own (`_group_json`, `_array_json`: the same zarr calls as a
    `zarr.create_array` without data); the chunks are what zarr's codec pipeline writes for them (bytes codec,
    little endian, then its Blosc codec's numcodecs compressor, partial last chunks padded with the fill value
    0, every chunk written), computed here without zarr's event loop: through it, one trip per array and per
    chunk write cost ~30x the compression itself (labeling's largest overhead: benchmarks/results/
    efficiency.md). tests/storage/test_storage_zarr_layout.py checks these bytes against zarr's own writer."""
    files = {"zarr.json": _group_json(json.dumps(dict(sorted(header.items())), sort_keys=False))}
    for name, a in cols.items():
        a = np.ascontiguousarray(a)
        rows = _rows_per_chunk(a, chunk_bytes)
        le = a.dtype.newbyteorder("<") if a.dtype.itemsize > 1 else a.dtype
        files[f"{name}/zarr.json"] = _array_json(name, a.shape, a.dtype.str, rows)
        blosc = _blosc(a.dtype.itemsize)
        for i, start in enumerate(range(0, a.shape[0], rows)):
            chunk = a[start:start + rows].astype(le, copy=False)
            if chunk.shape[0] < rows:  # the last chunk, padded with the fill value as zarr writes it
                chunk = np.concatenate([chunk, np.zeros((rows - chunk.shape[0], *a.shape[1:]), le)])
            files["/".join([name, "c", str(i), *["0"] * (a.ndim - 1)])] = bytes(blosc.encode(np.ascontiguousarray(chunk)))
    return dict(sorted(files.items()))


@functools.lru_cache(maxsize=64)
def _group_json(attributes_json: str) -> bytes:
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.group import GroupMetadata

    meta = GroupMetadata(attributes=json.loads(attributes_json))
    return meta.to_buffer_dict(default_buffer_prototype())["zarr.json"].to_bytes()


def _blosc_codec(typesize: int):
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=typesize)


@functools.lru_cache(maxsize=16)
def _blosc(typesize: int):
    """The numcodecs compressor zarr's BloscCodec of these settings encodes chunks with."""
    return _blosc_codec(typesize)._blosc_codec


@functools.lru_cache(maxsize=256)
def _array_json(name: str, shape: tuple[int, ...], dtype: str, rows: int) -> bytes:
    """zarr.json of one column, written by zarr itself into a scratch store (no data: no chunks)."""
    import zarr
    from zarr.storage import MemoryStore

    store: dict = {}
    zarr.create_array(MemoryStore(store), name=name, shape=shape, dtype=np.dtype(dtype), chunks=(rows, *shape[1:]),
                      fill_value=0, compressors=_blosc_codec(np.dtype(dtype).itemsize),
                      config={"write_empty_chunks": True})
    return store[f"{name}/zarr.json"].to_bytes()


def zip_store(files: dict[str, bytes]) -> bytes:
    """A deterministic, uncompressed zip of the store files (fixed order, time and mode)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.create_system, info.external_attr = 3, 0o644 << 16
            z.writestr(info, files[name])
    return out.getvalue()


def unzip_store(data: bytes) -> dict[str, memoryview]:
    """The store files of a zipped shard, as views into `data` (no copies); refuses anything but
    uncompressed Zarr store keys. Member CRCs are not recomputed: the shard's sha256 is the checksum
    (checked on first read by default), and a CRC pass costs as much as the decode."""
    view = memoryview(data)
    out: dict[str, memoryview] = {}
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for i in z.infolist():
            if i.compress_type != zipfile.ZIP_STORED or not _ZARR_MEMBER.match(i.filename) \
                    or i.filename in out:
                raise ValueError(f"unexpected zip member {i.filename!r} (compression {i.compress_type}); "
                                 "only uncompressed Zarr v3 store keys, each once, are allowed")
            h = i.header_offset  # local header: signature, ..., name length @26, extra length @28, name
            name_len, extra_len = int.from_bytes(data[h + 26:h + 28], "little"), \
                int.from_bytes(data[h + 28:h + 30], "little")
            start = h + 30 + name_len + extra_len
            if data[h:h + 4] != b"PK\x03\x04" or data[h + 30:h + 30 + name_len] != i.filename.encode() \
                    or start + i.file_size > len(data):
                raise ValueError(f"zip member {i.filename!r} has a damaged local header or is truncated")
            out[i.filename] = view[start:start + i.file_size]
    return out


_BLOSC_HEADER = 16  # c-blosc 1: version, versionlz, flags, typesize, nbytes u32, blocksize u32, cbytes u32
_MISSING = (1 << 64) - 1  # a sharding index entry for an absent inner chunk


def _check_blosc(chunk, nbytes: int, where: str) -> None:
    """A blosc chunk must promise exactly its grid cell's bytes (blosc allocates what its header says)."""
    head = bytes(chunk[:_BLOSC_HEADER])
    if len(head) < _BLOSC_HEADER:
        raise LayoutMismatch(f"chunk {where} is {len(head)} bytes, shorter than a blosc header")
    promised, cbytes = int.from_bytes(head[4:8], "little"), int.from_bytes(head[12:16], "little")
    if promised != nbytes or cbytes != len(chunk):
        raise LayoutMismatch(f"chunk {where} promises {promised} bytes in {cbytes} (it holds {len(chunk)}); "
                             f"its grid cell is {nbytes} bytes")


def _plain_codecs(codecs) -> bool:
    """bytes (little-endian, or no endianness for 1-byte types) then blosc: what this package writes."""
    return (isinstance(codecs, list) and len(codecs) == 2 and all(isinstance(c, dict) for c in codecs)
            and codecs[0].get("name") == "bytes"
            and (codecs[0].get("configuration") or {}).get("endian", "little") == "little"
            and codecs[1].get("name") == "blosc")


def _codec_names(codecs) -> list:
    return [c.get("name") if isinstance(c, dict) else c for c in codecs] if isinstance(codecs, list) else [codecs]


def check_zarr_store(files, expect: Expect, optional: frozenset[str] = frozenset()) -> None:
    """Raise LayoutMismatch unless the store holds exactly the expected arrays, each with the expected shape
    and dtype, a regular grid of whole-row chunks that are ALL present (zarr fills a missing one with zeros),
    only the codecs this package writes (bytes + blosc; old folder shards: the sharding codec of those) and
    blosc headers that promise exactly a chunk's bytes. Reads the small JSON documents and 16-byte blosc
    headers only: nothing is decoded, so nothing the shard declares is allocated."""
    columns = zarr_columns(files)
    if set(columns) - set(expect) or set(expect) - set(columns) - set(optional):
        raise LayoutMismatch(f"columns {columns} differ from the expected {sorted(set(expect) - set(optional))}")
    for name in columns:
        dtype, shape = expect[name]
        try:
            meta = json.loads(bytes(files[f"{name}/zarr.json"]))
            declared, data_type = [int(d) for d in meta["shape"]], str(meta["data_type"])
            grid, codecs = meta["chunk_grid"], meta.get("codecs")
            chunk = [int(d) for d in grid["configuration"]["chunk_shape"]]
        except (ValueError, KeyError, TypeError) as e:
            raise LayoutMismatch(f"column {name} has malformed array metadata ({type(e).__name__}: {e})") from None
        if meta.get("node_type") != "array" or meta.get("zarr_format") != 3:
            raise LayoutMismatch(f"column {name} is not a Zarr v3 array")
        if data_type != dtype.name or declared != list(shape):
            raise LayoutMismatch(f"column {name} declares {_fmt(data_type, declared)}, the manifest says "
                                 f"{_fmt(dtype, shape)}")
        if grid.get("name") != "regular" or len(chunk) != len(shape) or chunk[1:] != list(shape[1:]) \
                or not 1 <= chunk[0] <= max(1, shape[0]):
            raise LayoutMismatch(f"column {name} has chunk shape {chunk}: chunks must hold whole rows of {list(shape)}")
        if meta.get("chunk_key_encoding") != {"name": "default", "configuration": {"separator": "/"}} \
                or meta.get("storage_transformers") not in (None, []):
            raise LayoutMismatch(f"column {name} has an unexpected chunk key encoding or storage transformer")
        tail = "/0" * (len(shape) - 1)
        want = [f"{name}/c/{i}{tail}" for i in range(-(-shape[0] // chunk[0]))]
        have = sorted(k for k in files if k.startswith(f"{name}/c/"))
        if have != want:
            raise LayoutMismatch(f"column {name} has chunks {have}, its chunk grid {chunk} needs {want}")
        cell = int(np.prod(chunk)) * dtype.itemsize
        if _plain_codecs(codecs):
            for key in want:
                _check_blosc(files[key], cell, key)
        elif isinstance(codecs, list) and len(codecs) == 1 and isinstance(codecs[0], dict) \
                and codecs[0].get("name") == "sharding_indexed":
            _check_sharded(name, codecs[0].get("configuration") or {}, chunk, dtype, want, files)
        else:
            raise LayoutMismatch(f"column {name} uses codecs {_codec_names(codecs)}; only bytes+blosc (or the "
                                 "folder layout's sharding of them) are read")


def _check_sharded(name: str, cfg: dict, chunk: list[int], dtype: np.dtype, keys: list[str], files) -> None:
    """Old folder shards: each chunk is a sharding-codec object of inner bytes+blosc chunks with an index
    (offset, nbytes u64 pairs + crc32c) at its end; every inner chunk must be present and promise its bytes."""
    inner = cfg.get("chunk_shape")
    if not isinstance(inner, list) or len(inner) != len(chunk) or not all(
            isinstance(i, int) and i >= 1 and c % i == 0 for i, c in zip(inner, chunk)) \
            or not _plain_codecs(cfg.get("codecs")) or cfg.get("index_location", "end") != "end" \
            or _codec_names(cfg.get("index_codecs")) != ["bytes", "crc32c"]:
        raise LayoutMismatch(f"column {name} has an unexpected sharding configuration")
    n_inner = int(np.prod([c // i for c, i in zip(chunk, inner)]))
    cell = int(np.prod(inner)) * dtype.itemsize
    for key in keys:
        data = files[key]
        index_bytes = 16 * n_inner + 4
        if len(data) < index_bytes:
            raise LayoutMismatch(f"chunk {key} is shorter than its shard index")
        index = np.frombuffer(bytes(data[len(data) - index_bytes:len(data) - 4]), dtype="<u8").reshape(-1, 2)
        for j, (off, nb) in enumerate(index.tolist()):
            if off == _MISSING or off + nb > len(data) - index_bytes:
                raise LayoutMismatch(f"chunk {key} misses inner chunk {j} or points past its data")
            _check_blosc(memoryview(data)[off:off + nb], cell, f"{key}#{j}")


def decode_zarr(files: dict[str, bytes] | dict[str, memoryview], expect: Expect | None = None,
                optional: frozenset[str] = frozenset()) -> tuple[dict[str, np.ndarray], dict]:
    """Decode a Zarr v3 store given as files; every column is opened at its known path (no listing).
    With `expect`, the store is checked against it first (`check_zarr_store`)."""
    import zarr
    import zarr.api.asynchronous
    from zarr.core.buffer import cpu
    from zarr.core.sync import sync
    from zarr.storage import MemoryStore

    if "zarr.json" not in files:
        raise ValueError("the shard has no root zarr.json")
    root = json.loads(bytes(files["zarr.json"]))
    if root.get("node_type") != "group" or root.get("zarr_format") != 3:
        raise ValueError("zarr.json is not a Zarr v3 group")
    columns = zarr_columns(files)
    if expect is not None:
        check_zarr_store(files, expect, optional)
    ms = MemoryStore({k: cpu.Buffer.from_bytes(v) for k, v in files.items()}, read_only=True)  # no copy

    async def read_all() -> list:
        # One trip to zarr's event loop for all columns, decoded concurrently (codecs release the GIL).
        arrays = await asyncio.gather(*(zarr.api.asynchronous.open_array(store=ms, path=n, mode="r")
                                        for n in columns))
        return await asyncio.gather(*(a.getitem(Ellipsis) for a in arrays))

    values = sync(read_all())
    return dict(zip(columns, values)), root.get("attributes", {})


def zarr_columns(files: dict[str, bytes]) -> list[str]:
    """Column names present in a store's file list (from the shard itself, not from a listing)."""
    return sorted({k.split("/")[0] for k in files if k.endswith("/zarr.json") and k.count("/") == 1})


# ---- WebDataset tar --------------------------------------------------------------------------------
def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info, io.BytesIO(data)


def encode_tar(cols: dict[str, np.ndarray], header: dict, chunk_bytes: int = CHUNK_BYTES) -> bytes:
    n = next(iter(cols.values())).shape[0]
    k = max(1, min(_rows_per_chunk(a, chunk_bytes) for a in cols.values()))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        tar.addfile(*_member("_shard.json", json.dumps(header, sort_keys=True).encode()))
        for b, start in enumerate(range(0, n, k)):
            for name, a in cols.items():
                buf = io.BytesIO()
                np.save(buf, a[start:start + k], allow_pickle=False)
                tar.addfile(*_member(f"{b:06d}.{name}.npy", buf.getvalue()))
    return out.getvalue()


def _check_npy(name: str, column: str, raw: bytes, expect: Expect, seen: dict[str, int]) -> None:
    """Check a .npy member's header against the manifest before np.load allocates what it declares."""
    if column not in expect:
        raise LayoutMismatch(f"tar member {name} is column {column!r}, not one of {sorted(expect)}")
    dtype, shape = expect[column]
    fp = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(fp)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}[version]
        declared, fortran, got = read(fp)
    except (ValueError, KeyError, SyntaxError) as e:
        raise LayoutMismatch(f"tar member {name} has no valid .npy header ({type(e).__name__}: {e})") from None
    left = shape[0] - seen.get(column, 0)
    if got != dtype or len(declared) != len(shape) or list(declared[1:]) != list(shape[1:]) \
            or not 1 <= declared[0] <= left:
        raise LayoutMismatch(f"tar member {name} declares {_fmt(got, declared)}, the manifest says "
                             f"{dtype.name}[<={left}{''.join(f', {d}' for d in shape[1:])}]")
    if fortran:
        raise LayoutMismatch(f"tar member {name} is Fortran-ordered; only C order is read")
    size = int(np.prod(declared)) * dtype.itemsize
    if len(raw) - fp.tell() != size:
        raise LayoutMismatch(f"tar member {name} holds {len(raw) - fp.tell()} bytes of data, its header declares {size}")
    seen[column] = seen.get(column, 0) + declared[0]


def decode_tar(data: bytes, expect: Expect | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Read a tar shard: only `_shard.json` and numeric `.npy` members, never unpickling anything. With
    `expect`, each member's .npy header is checked against it before the member is loaded."""
    header = None
    blocks: dict[int, dict[str, np.ndarray]] = {}
    seen: dict[str, int] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for m in tar:
            match = _TAR_MEMBER.match(m.name)
            if not m.isreg() or not match:
                raise ValueError(f"unexpected tar member {m.name!r}; only _shard.json and "
                                 "<block>.<column>.npy are allowed (nothing is ever unpickled)")
            raw = tar.extractfile(m).read()
            if len(raw) != m.size:
                raise ValueError(f"tar member {m.name!r} is truncated")
            if match.group(1) is None:
                header = json.loads(raw)
                continue
            if expect is not None:
                _check_npy(m.name, match.group(2), raw, expect, seen)
            a = np.load(io.BytesIO(raw), allow_pickle=False)
            if a.dtype.kind not in "iuf":
                raise ValueError(f"tar member {m.name!r} has non-numeric dtype {a.dtype}")
            blocks.setdefault(int(match.group(1)), {})[match.group(2)] = a
    if header is None:
        raise ValueError("tar shard has no _shard.json header")
    if sorted(blocks) != list(range(len(blocks))) or not blocks:
        raise ValueError(f"tar blocks are not contiguous from 0: {sorted(blocks)[:5]}...")
    names = set(blocks[0])
    if any(set(b) != names for b in blocks.values()):
        raise ValueError("tar blocks hold different column sets")
    cols = {name: np.concatenate([blocks[i][name] for i in range(len(blocks))]) for name in sorted(names)}
    return cols, header


# ---- the formats as objects ------------------------------------------------------------------------
class ShardFormat:
    """One on-disk shard format: how a shard's columns and header become files and back."""

    name: str
    suffix: str
    """File name ending of the shards this format writes."""

    def write(self, cols: dict[str, np.ndarray], header: dict, chunk_bytes: int = CHUNK_BYTES) -> dict[str, bytes]:
        """The shard's files: `{"": bytes}` (every format writes one object)."""
        raise NotImplementedError

    def read(self, files: dict[str, bytes], expect: Expect | None = None,
             optional: frozenset[str] = frozenset()) -> tuple[dict[str, np.ndarray], dict]:
        """(columns, header) of a shard's files (ValueError naming what is wrong when they are not one).
        With `expect` (the columns its manifest entry implies; `optional` ones may be absent) the shard's
        own metadata is checked against it BEFORE anything is decoded (LayoutMismatch), so no declared
        shape is ever allocated that the manifest did not promise."""
        raise NotImplementedError

    def verify(self, path: str, listed: dict[str, int]) -> None:
        """Check a manifest entry's path and file list (`files`) fit this format; ValueError if not."""
        if listed:
            raise ValueError(f"one-object shards ({self.suffix}) have no file list")


class ZarrFormat(ShardFormat):
    name, suffix = "zarr", ".zarr.zip"

    def write(self, cols, header, chunk_bytes=CHUNK_BYTES):
        return {"": encode_zarr(cols, header, chunk_bytes)}

    def read(self, files, expect=None, optional=frozenset()):
        store = unzip_store(files[""]) if set(files) == {""} else files  # zip, or an old folder
        return decode_zarr(store, expect, optional)

    def verify(self, path, listed):
        if bool(listed) == path.endswith(self.suffix):
            raise ValueError("zarr folder shards need a file list, one-object shards (.zarr.zip) none")


class TarFormat(ShardFormat):
    name, suffix = "wds", ".tar"

    def write(self, cols, header, chunk_bytes=CHUNK_BYTES):
        return {"": encode_tar(cols, header, chunk_bytes)}

    def read(self, files, expect=None, optional=frozenset()):
        return decode_tar(files[""], expect)


FORMATS: dict[str, ShardFormat] = {f.name: f for f in (ZarrFormat(), TarFormat())}


def shard_format(name: str) -> ShardFormat:
    """The format a manifest entry or config names."""
    if name not in FORMATS:
        raise ValueError(f"unknown shard format {name!r}; expected one of {tuple(FORMATS)}")
    return FORMATS[name]
