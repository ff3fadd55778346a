"""Where a stream's tokens come from: `text:` (the bytes of files at an fsspec glob), `hf:` (a text column of
a Hugging Face dataset), `parquet:` (a string or list<int> column of Parquet files at an fsspec glob) and
`tokens:` (a 1-D .npy file or Zarr array of token ids). Data is read lazily, window by window; `hf_load` is
shared with MNIST (images.py)."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.corpora.spec import CorpusError, Params
from pipeline.corpora.streams import StreamCorpus, cut_stream, split_params, split_stream, stream_params
from pipeline.lazy_tokens import ArrayDoc, FileDoc, LazyTokens, ParquetRows, Rows, _open_file, npy_doc

__all__ = ["HFTextCorpus", "ParquetCorpus", "TextCorpus", "TokensCorpus", "hf_load"]


class TextCorpus(StreamCorpus):
    """`text:<fsspec glob>|T=256,stride=T,sep=0,split=train,valid_frac=0.05,test_frac=0.1`: the bytes of all
    matching files (sorted by path), vocab 256.

    Files are joined with the separator byte `sep` (default 0x00; sep=-1 joins with nothing). The files are
    the documents of the split (spec.py): one file is cut into contiguous byte ranges.
    """

    kind = "text"

    def __init__(self, location: str, raw: dict[str, str], storage_options: dict | None = None):
        import fsspec

        p = Params(self.kind, raw)
        T, stride = stream_params(p)
        sep = p.int("sep", 0, lo=-1, hi=255)
        self.split, vf, tf = split_params(p)
        p.finish()
        try:
            fs, _, paths = fsspec.core.get_fs_token_paths(location, storage_options=storage_options or {})
        except Exception as e:  # noqa: BLE001 - report any filesystem failure in one line
            raise CorpusError(
                f"text: cannot open {location!r} ({type(e).__name__}: {e}): check the URL"
            ) from None
        paths = sorted(pth for pth in paths if fs.isfile(pth))
        if not paths:
            raise CorpusError(f"text: no files match {location!r}: check the path or glob")
        docs = [FileDoc(fs, pth, fs.size(pth)) for pth in paths]  # read lazily, window by window
        self.files = paths
        self.location = location
        data, info = split_stream(LazyTokens(docs, sep), self.split, vf, tf)
        self._init_stream(data, T, stride, 256, f"{len(paths)} file(s) {location!r}", info)
        self._p = p.values
        self.spec = f"text:{location}|{p.canonical()}"

    def params(self):
        return dict(kind=self.kind, location=self.location, num_files=len(self.files), **self.split_info, **self._p)


class ParquetCorpus(StreamCorpus):
    """`parquet:<fsspec url or glob>|column=text,T=256,stride=T,sep=0|-1,vocab=<max+1>,split=train,
    valid_frac=0.05,test_frac=0.1`: the non-null rows of one column of the matching Parquet files (sorted by
    path; local, s3://, any fsspec URL), each row a document, read lazily a row group at a time through pyarrow.

    A string column gives utf-8 bytes (vocab 256, rows joined with the byte `sep`, default 0x00): the same
    stream, splits, windows and data digest as `text:` over one file per row. A list<int> column gives token
    ids (vocab = `vocab` or the largest id + 1, rows joined with nothing by default, or with the id `sep`):
    the same as `tokens:` over the rows concatenated, except that rows are documents for the splits.
    """

    kind = "parquet"

    def __init__(self, location: str, raw: dict[str, str], storage_options: dict | None = None):
        import fsspec

        p = Params(self.kind, raw)
        column = p.str("column", "text")
        T, stride = stream_params(p)
        sep_raw = p.raw.get("sep")
        sep = p.int("sep", 0, lo=-1)
        vocab = p.int("vocab", None, lo=1)
        self.split, vf, tf = split_params(p)
        p.finish()
        try:
            fs, _, paths = fsspec.core.get_fs_token_paths(location, storage_options=storage_options or {})
            paths = sorted(pth for pth in paths if fs.isfile(pth))
        except Exception as e:  # noqa: BLE001 - report any filesystem failure in one line
            raise CorpusError(f"parquet: cannot open {location!r} ({type(e).__name__}: {e}): check the URL") from None
        if not paths:
            raise CorpusError(f"parquet: no files match {location!r}: check the path or glob")
        ids = _parquet_column_kind(fs, paths, column)
        if ids:
            if sep_raw is None:
                sep = p.values["sep"] = -1  # token ids: rows follow each other unless a separator id is asked for
            if vocab is not None and sep >= vocab:
                raise CorpusError(f"parquet: sep={sep} outside vocab={vocab}: use a separator id < vocab, or sep=-1")
        elif sep > 255:
            raise CorpusError(f"parquet: sep={sep} too large for a text column (bytes): need sep <= 255, or sep=-1")
        elif vocab is not None:
            raise CorpusError(f"parquet: vocab={vocab} is for a list<int> column; column={column!r} is text "
                              "(bytes, vocab 256): drop vocab")
        try:
            docs, lo, hi, rows = ParquetRows.scan(fs, paths, column, ids)
        except CorpusError:
            raise
        except Exception as e:  # noqa: BLE001 - a file that changed or cannot be decoded, in one line
            raise CorpusError(f"parquet: cannot read column {column!r} of {location!r} ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}): check the files") from None
        if not len(docs):
            raise CorpusError(f"parquet: {location!r} has no non-null rows in column {column!r} ({sum(rows)} rows "
                              "in all): point the spec at files with data")
        if ids:
            if lo < 0:
                raise CorpusError(f"parquet: token {lo} < 0 in column {column!r} of {location!r}: ids must be 0..vocab-1")
            if vocab is None:
                vocab = p.values["vocab"] = max(hi, sep) + 1
            elif hi >= vocab:
                raise CorpusError(f"parquet: token {hi} outside vocab={vocab} in column {column!r} of {location!r}: "
                                  f"raise vocab to >= {hi + 1} or drop the param")
            dtype = docs_dtype(fs, paths[0], column)
        else:
            vocab, dtype = 256, np.uint8
        self.files, self.location, self.column, self.num_rows = paths, location, column, len(docs)
        data, info = split_stream(LazyTokens(docs, sep, dtype), self.split, vf, tf)
        self._init_stream(data, T, stride, vocab, f"column {column!r} of {len(paths)} file(s) {location!r}", info)
        self._p = p.values
        self.spec = f"parquet:{location}|{p.canonical()}"

    def params(self):
        return dict(kind=self.kind, location=self.location, num_files=len(self.files), num_rows=self.num_rows,
                    **self.split_info, **self._p)


def _parquet_column_kind(fs, paths: list[str], column: str) -> bool:
    """Checks every file's footer: a Parquet file holding `column` as a string column (False) or a list of
    integers (True), the same kind and value type in every file. One-line CorpusError otherwise."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    kinds = {}
    for path in paths:
        try:
            with _open_file(fs, path) as f:
                schema = pq.ParquetFile(f).schema_arrow
        except Exception as e:  # noqa: BLE001 - an empty or foreign file, in one line
            msg = str(e).splitlines()[0] if str(e) else ""
            raise CorpusError(f"parquet: {path} is not a readable Parquet file ({type(e).__name__}: {msg}): "
                              "remove it or fix the glob") from None
        if column not in schema.names:
            raise CorpusError(f"parquet: no column {column!r} in {path} (columns: {schema.names}): set column=<name>")
        t = schema.field(column).type
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            kinds[path] = "string"
        elif (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_integer(t.value_type):
            kinds[path] = f"list<{t.value_type}>"
        else:
            raise CorpusError(f"parquet: column {column!r} of {path} is {t}: need a string column (text) or "
                              "list<int> (token ids); pick another column=")
    if len(set(kinds.values())) > 1:
        raise CorpusError(f"parquet: column {column!r} has different types across files ({kinds}): "
                          "give files of one schema")
    return next(iter(kinds.values())) != "string"


def docs_dtype(fs, path: str, column: str) -> np.dtype:
    """The numpy dtype of the token ids of a list<int> column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with _open_file(fs, path) as f:
        t = pq.ParquetFile(f).schema_arrow.field(column).type.value_type
    return np.dtype(f"{'i' if pa.types.is_signed_integer(t) else 'u'}{t.bit_width // 8}")


class HFTextCorpus(StreamCorpus):
    """`hf:<dataset>|hf_split=train,field=text,T=256,stride=T,sep=0,split=train,valid_frac=0.05,test_frac=0.1
    [,name=<config>][,data_files=<glob>]`.

    Loads `datasets.load_dataset(<dataset>, name, split=hf_split, data_files=...)` (the hub by default, e.g.
    hf:roneneldan/TinyStories; or a packaged builder with local files, e.g. hf:json|data_files=/d/*.jsonl),
    encodes each row's `field` as utf-8 bytes (vocab 256) and joins rows with the byte `sep` (default 0x00,
    -1 = no separator; the reference joins TinyStories with nothing and drops non-ascii). The rows of
    `hf_split` are the documents that `split` (train|valid|test) divides (spec.py).
    """

    kind = "hf"

    def __init__(
        self,
        location: str,
        raw: dict[str, str],
        cache_dir: str | None = None,
        storage_options: dict | None = None,
    ):
        p = Params(self.kind, raw)
        split = p.str("hf_split", "train")
        field = p.str("field", "text")
        name = p.str("name", None)
        data_files = p.str("data_files", None)
        T, stride = stream_params(p)
        sep = p.int("sep", 0, lo=-1, hi=255)
        self.split, vf, tf = split_params(p)
        p.finish()
        ds = hf_load(self.kind, location, name, split, data_files, cache_dir, storage_options)
        if field not in ds.column_names:
            raise CorpusError(
                f"hf: no column field={field!r} in {location!r} (columns: {ds.column_names}): "
                f"set field=<column>"
            )
        docs = Rows.scan(ds, field)  # rows stay in the memory-mapped Arrow cache
        if not len(docs):
            raise CorpusError(
                f"hf: {location!r} hf_split={split} has 0 rows: choose another hf_split or data_files"
            )
        self.location = location
        self.num_rows = len(docs)
        data, info = split_stream(LazyTokens(docs, sep), self.split, vf, tf)
        self._init_stream(data, T, stride, 256, f"{location!r} hf_split={split}", info)
        self._p = p.values
        self.spec = f"hf:{location}|{p.canonical()}"

    def params(self):
        return dict(kind=self.kind, location=self.location, num_rows=self.num_rows, **self.split_info, **self._p)


def hf_load(kind, path, name, split, data_files, cache_dir, storage_options):
    import datasets

    kw: dict[str, Any] = {}
    if data_files is not None:
        files = data_files.split(",") if "," in data_files else data_files
        kw["data_files"] = {split: files}
    try:
        ds = datasets.load_dataset(
            path, name, split=split, cache_dir=cache_dir, storage_options=storage_options, **kw
        )
    except Exception as e:  # noqa: BLE001 - one-line message for hub/network/file errors
        msg = str(e).splitlines()[0] if str(e) else ""
        raise CorpusError(
            f"{kind}: cannot load dataset {path!r} split={split} ({type(e).__name__}: {msg}): "
            f"check the name/split, or pass local files with data_files="
        ) from None
    return ds


class TokensCorpus(StreamCorpus):
    """`tokens:<fsspec url>|T=256,stride=T,vocab=<max+1>[,key=<array in a zarr group>],split=train,...`.

    A url ending in .npy is read with numpy; anything else is opened as a Zarr (v2/v3) array or group.
    One array is one document: the splits are contiguous token ranges (spec.py).
    """

    kind = "tokens"

    def __init__(self, location: str, raw: dict[str, str], storage_options: dict | None = None):
        p = Params(self.kind, raw)
        T, stride = stream_params(p)
        vocab = p.int("vocab", None, lo=1)
        key = p.str("key", None)
        self.split, vf, tf = split_params(p)
        p.finish()
        data = self._read(location, key, storage_options or {})
        if not np.issubdtype(data.dtype, np.integer):
            raise CorpusError(f"tokens: {location!r} has dtype {data.dtype}: store integer token ids")
        if data.ndim == 1 and data.size:
            lo, hi = _min_max(data)
            if lo < 0:
                raise CorpusError(f"tokens: token {lo} < 0 in {location!r}: ids must be 0..vocab-1")
            if vocab is None:
                vocab = hi + 1
                p.values["vocab"] = vocab
            elif hi >= vocab:
                raise CorpusError(
                    f"tokens: token {hi} outside vocab={vocab} in {location!r}: raise vocab to "
                    f">= {hi + 1} or drop the param"
                )
        self.location = location
        if data.ndim == 1:
            data, info = cut_stream(data, self.split, vf, tf)
        else:
            info = {}
        self._init_stream(data, T, stride, vocab or 1, repr(location), info)
        self._p = p.values
        self.spec = f"tokens:{location}|{p.canonical()}"

    @staticmethod
    def _read(location: str, key: str | None, storage_options: dict) -> np.ndarray:
        try:
            if location.rstrip("/").endswith(".npy"):
                import fsspec

                fs, path = fsspec.core.url_to_fs(location, **storage_options)
                doc = npy_doc(fs, path)  # the header now, the tokens window by window
                return LazyTokens([doc], dtype=doc.dtype) if isinstance(doc, FileDoc) else doc
            import zarr

            # the metadata JSON is checked before zarr parses it or decodes a chunk (object codecs run code)
            check_zarr_codecs(location, location, storage_options)
            if key is not None:
                check_zarr_codecs(location, f"{location.rstrip('/')}/{key}", storage_options)
            node = zarr.open(store=location, mode="r", storage_options=storage_options or None)
            if hasattr(node, "array_keys"):  # a group
                keys = sorted(node.array_keys())
                if key is None:
                    if len(keys) != 1:
                        raise CorpusError(
                            f"tokens: {location!r} is a Zarr group with arrays {keys}: set key=<name>"
                        )
                    key = keys[0]
                if key not in keys:
                    raise CorpusError(
                        f"tokens: key={key!r} not in Zarr group {location!r} (arrays {keys}): fix key"
                    )
                check_zarr_codecs(location, f"{location.rstrip('/')}/{key}", storage_options)
                node = node[key]
            if len(node.shape) == 1:  # Zarr slices lazily: read chunks as windows need them
                return LazyTokens([ArrayDoc(node)], dtype=node.dtype)
            return np.asarray(node[...])
        except CorpusError:
            raise
        except Exception as e:  # noqa: BLE001
            raise CorpusError(
                f"tokens: cannot read {location!r} ({type(e).__name__}: {e}): give a 1-D .npy "
                f"file or a Zarr array URL"
            ) from None

    def params(self):
        return dict(kind=self.kind, location=self.location, **self.split_info, **self._p)


# Codecs a token array may use: byte-level compressors, checksums and numeric filters. Object codecs
# (pickle, json2, msgpack2, vlen-*, ...) turn stored bytes into Python objects (pickle.loads runs code), so a
# `tokens:` store naming one is refused before any chunk is read, whatever zarr/numcodecs version is installed.
SAFE_CODECS = frozenset({
    "blosc", "zstd", "lz4", "zlib", "gzip", "bz2", "lzma", "delta", "shuffle", "bitround", "fixedscaleoffset",
    "packbits", "astype", "crc32", "crc32c", "adler32", "fletcher32", "jenkins_lookup3",  # v2 ids (numcodecs)
    "bytes", "endian", "transpose", "sharding_indexed",  # v3 core codec names
})


def _v3_codec_names(codecs: list) -> list[str]:
    names = []
    for c in codecs or []:
        name = c if isinstance(c, str) else str(c.get("name", "?"))
        names.append(name.removeprefix("numcodecs."))
        conf = {} if isinstance(c, str) else (c.get("configuration") or {})
        names += _v3_codec_names(conf.get("codecs", [])) + _v3_codec_names(conf.get("index_codecs", []))
    return names


def check_zarr_codecs(location: str, path: str, storage_options: dict) -> None:
    """Refuse a Zarr token array at `path` whose metadata names a dtype other than integers or a codec outside
    `SAFE_CODECS` (CorpusError naming the codec and the fix). Reads the metadata JSON only; a group, or a
    path holding neither `.zarray` nor an array's `zarr.json`, passes (zarr reports what it is)."""
    import json

    import fsspec

    fs, root = fsspec.core.url_to_fs(path, **storage_options)
    root = root.rstrip("/")
    if fs.exists(f"{root}/.zarray"):  # Zarr v2
        meta = json.loads(fs.cat_file(f"{root}/.zarray"))
        names = [str(c.get("id", "?")) for c in [meta.get("compressor"), *(meta.get("filters") or [])] if c]
        dtype = str(meta.get("dtype"))
        integer = dtype[-2:-1] in ("i", "u") and dtype[:1] in "<>|="
    else:  # Zarr v3
        if not fs.exists(f"{root}/zarr.json"):
            return
        meta = json.loads(fs.cat_file(f"{root}/zarr.json"))
        if meta.get("node_type") != "array":
            return
        names = _v3_codec_names(meta.get("codecs", []))
        dtype = str(meta.get("data_type"))
        integer = dtype in {f"{k}{b}" for k in ("int", "uint") for b in (8, 16, 32, 64)}
    bad = [n for n in names if n not in SAFE_CODECS]
    if bad:
        raise CorpusError(f"tokens: {location!r} uses the codec {bad[0]!r}, which can run code when read: only "
                          f"{', '.join(sorted(SAFE_CODECS))} are read; re-save the tokens as an integer array "
                          "with one of them (or no compressor)")
    if not integer:
        raise CorpusError(f"tokens: {location!r} has dtype {dtype}: store integer token ids")


def _min_max(data) -> tuple[int, int]:
    """Smallest and largest token, scanning a lazy stream chunk by chunk."""
    parts = [(int(c.min()), int(c.max())) for c in (data.chunks() if isinstance(data, LazyTokens) else [data]) if c.size]
    return min(p[0] for p in parts), max(p[1] for p in parts)
