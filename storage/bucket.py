"""One fsspec-rooted bucket object: every byte this package moves goes through a `Bucket`.

A bucket is a filesystem plus a root folder, built from a URL (a local path, `file://`, `memory://`,
`s3://`). Paths given to its methods are relative, '/'-separated and may not escape the root. Calls that
fail transiently are retried with exponential backoff; after the retries (or at once, for errors that a
retry cannot fix) they raise `BucketError` naming the object and a fix. Nothing on the read path lists:
reads, sizes and existence checks are single-object requests (HEAD/GET on S3).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import IO, Any, TypeVar

import fsspec
from fsspec.asyn import sync

from storage.errors import BucketError, ObjectNotFound, one_line

T = TypeVar("T")
_PERMANENT = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, ValueError,
              TypeError, KeyError)
_MEMORY_LOCK = threading.Lock()  # memory:// has no atomic create; one process owns it, so a lock is enough
_PROBE_LOCK = threading.Lock()  # one create-if-absent probe per S3 bucket and filesystem, even under threads
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
MAX_EXCLUSIVE_PUT = 5 << 30  # the largest object one S3 PUT takes; exclusive creates are one conditional PUT


def _precondition_failed(e: BaseException | None) -> bool:
    """Whether an error (or what it was translated from) is an HTTP 412 / PreconditionFailed reply."""
    while e is not None:
        resp = getattr(e, "response", None)
        if isinstance(resp, dict) and (resp.get("Error", {}).get("Code") == "PreconditionFailed"
                                       or resp.get("ResponseMetadata", {}).get("HTTPStatusCode") == 412):
            return True
        e = e.__cause__
    return False


def check_relpath(rel: str, what: str = "path") -> str:
    """Return `rel` if it is a safe relative path under a root; raise ValueError otherwise."""
    if not isinstance(rel, str) or not rel:
        raise ValueError(f"{what} must be a non-empty relative path, got {rel!r}")
    if _SCHEME.match(rel) or "://" in rel:
        raise ValueError(f"{what} {rel!r} is a URL; only paths relative to the target set are allowed")
    if rel.startswith(("/", "\\")) or "\\" in rel:
        raise ValueError(f"{what} {rel!r} is absolute or uses backslashes; use a relative '/'-path")
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"{what} {rel!r} has an empty, '.' or '..' component; it must stay under the root")
    return rel


class Bucket:
    """A filesystem rooted at a folder; all paths are relative to `root`."""

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, *, protocol: str,
                 endpoint_url: str | None = None, retries: int = 4) -> None:
        self.fs = fs
        self.root = root.rstrip("/") if root != "/" else root
        self.protocol = protocol
        self.endpoint_url = endpoint_url
        self.retries = max(0, int(retries))

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_url(cls, url: str, *, endpoint_url: str | None = None, retries: int = 4) -> Bucket:
        """Build a bucket from a local path, `file://`, `memory://` or `s3://` URL."""
        if not isinstance(url, str) or not url:
            raise BucketError(f"bucket URL must be a non-empty string, got {url!r}")
        if "://" not in url:
            url = "file://" + os.path.abspath(os.path.expanduser(url))
        protocol, _, rest = url.partition("://")
        protocol = protocol.lower()
        if protocol in ("file", "local"):
            fs = fsspec.filesystem("file")
            return cls(fs, os.path.abspath("/" + rest.lstrip("/")), protocol="file", retries=retries)
        if protocol == "memory":
            fs = fsspec.filesystem("memory")
            return cls(fs, "/" + rest.strip("/"), protocol="memory", retries=retries)
        if protocol in ("s3", "s3a"):
            try:
                import s3fs  # noqa: F401
            except ImportError as e:  # optional dependency: say how to get it
                raise BucketError(f"cannot open {url}: s3fs is not installed; pip install s3fs") from e
            endpoint = (endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
                        or os.environ.get("AWS_ENDPOINT_URL") or None)
            fs = fsspec.filesystem(
                "s3", endpoint_url=endpoint, use_listings_cache=False,
                config_kwargs={"connect_timeout": 5, "read_timeout": 60,
                               "retries": {"total_max_attempts": 2, "mode": "standard"}})
            fs.retries = 1  # s3fs's own retry loop would multiply ours; we retry with backoff below
            root = rest.strip("/")
            if not root:
                raise BucketError(f"S3 URL {url!r} names no bucket; use s3://<bucket>[/<prefix>]")
            return cls(fs, root, protocol="s3", endpoint_url=endpoint, retries=retries)
        raise BucketError(f"unsupported bucket URL scheme {protocol!r} in {url!r}; "
                          "use a local path, file://, memory:// or s3://")

    def child(self, rel: str) -> Bucket:
        """A bucket rooted at `rel` under this one (same filesystem and settings)."""
        return Bucket(self.fs, self._path(rel), protocol=self.protocol, endpoint_url=self.endpoint_url,
                      retries=self.retries)

    # ---- naming -------------------------------------------------------------------------------
    def _path(self, rel: str) -> str:
        check_relpath(rel)
        return f"{self.root}/{rel}" if self.root != "/" else f"/{rel}"

    def url(self, rel: str | None = None) -> str:
        """Full URL of `rel` (or of the root)."""
        path = self.root if rel is None else self._path(rel)
        return f"{self.protocol}://{path}"

    def _where(self, rel: str | None) -> str:
        where = self.url(rel)
        return f"{where} (endpoint {self.endpoint_url})" if self.endpoint_url else where

    def __repr__(self) -> str:
        return f"Bucket({self._where(None)!r})"

    # ---- retry core ---------------------------------------------------------------------------
    def _call(self, action: str, rel: str | None, fn: Callable[[], T], *,
              passthrough: tuple[type[BaseException], ...] = ()) -> T:
        """Run `fn` with retries; let `passthrough` errors out unchanged, wrap the rest in BucketError."""
        delay = 0.05
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except passthrough:
                raise
            except PermissionError as e:
                raise BucketError(f"cannot {action} {self._where(rel)}: access denied ({one_line(e)}); "
                                  "check the credentials (AWS_* env or ~/.aws) and bucket policy") from e
            except FileNotFoundError as e:
                raise ObjectNotFound(f"cannot {action} {self._where(rel)}: no such object") from e
            except _PERMANENT as e:
                raise BucketError(f"cannot {action} {self._where(rel)}: {type(e).__name__}: "
                                  f"{one_line(e)}") from e
            except Exception as e:
                if attempt >= self.retries:
                    raise BucketError(
                        f"cannot {action} {self._where(rel)} after {attempt + 1} attempts: "
                        f"{type(e).__name__}: {one_line(e)}; check that the endpoint is reachable "
                        "(--endpoint-url / AWS_ENDPOINT_URL) and retry") from e
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    # ---- reads (single-object requests only) --------------------------------------------------
    def read_bytes(self, rel: str) -> bytes:
        """The whole object; FileNotFoundError-style absence raises BucketError."""
        path = self._path(rel)
        return self._call("read", rel, lambda: self.fs.cat_file(path))

    def read_many(self, rels: Iterable[str]) -> dict[str, bytes]:
        """Several whole objects at once (concurrent GETs on S3); keys are the given relative paths."""
        rels = list(rels)
        paths = [self._path(r) for r in rels]
        if self.protocol != "s3" or len(rels) < 2:
            return {r: self.read_bytes(r) for r in rels}
        out = self._call("read", rels[0] + f" (+{len(rels) - 1} more)",
                         lambda: self.fs.cat(paths, on_error="raise"))
        return {r: out[p] for r, p in zip(rels, paths)}

    def _head(self, path: str) -> dict[str, Any]:
        # HEAD only: s3fs.info() falls back to a LIST when the key is absent (to spot "folders").
        bucket, key, _ = self.fs.split_path(path)
        return sync(self.fs.loop, self.fs._call_s3, "head_object", Bucket=bucket, Key=key)

    def exists(self, rel: str) -> bool:
        """Whether the object exists (a HEAD on S3, never a LIST)."""
        path = self._path(rel)

        def probe() -> bool:
            if self.protocol != "s3":
                return self.fs.exists(path)
            try:
                self._head(path)
                return True
            except FileNotFoundError:
                return False

        return self._call("check", rel, probe)

    def size(self, rel: str) -> int:
        """Size of the object in bytes."""
        path = self._path(rel)
        if self.protocol == "s3":
            return int(self._call("stat", rel, lambda: self._head(path))["ContentLength"])
        return int(self._call("stat", rel, lambda: self.fs.size(path)))

    def open(self, rel: str, mode: str = "rb") -> IO[bytes]:
        """A file object (not atomic for writes; prefer write_bytes/create_exclusive)."""
        path = self._path(rel)
        if self.protocol == "file" and any(c in mode for c in "wax"):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        return self._call("open", rel, lambda: self.fs.open(path, mode))

    # ---- writes -------------------------------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write (replace) an object; atomic on a local folder (temp file + rename)."""
        path = self._path(rel)
        if self.protocol == "file":
            self._call("write", rel, lambda: _local_atomic_write(path, data))
        else:
            self._call("write", rel, lambda: self.fs.pipe_file(path, data))

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        """Create the object only if absent; False if it already exists (S3: one PUT with If-None-Match: *).

        On S3 the answer can be ambiguous: a create the store applied whose reply was lost is retried and
        then finds the object, so False means "exists, maybe by this very call". Callers that must tell
        compare the bytes (`writer._publish`, `manifest.commit`)."""
        path = self._path(rel)

        def create() -> bool:
            if self.protocol == "file":
                return _local_exclusive_write(path, data)
            if self.protocol == "memory":
                with _MEMORY_LOCK:
                    if self.fs.exists(path):
                        return False
                    self.fs.pipe_file(path, data)
                    return True
            return self._put_if_absent(path, data)

        if self.protocol == "s3":
            if len(data) > MAX_EXCLUSIVE_PUT:
                raise BucketError(f"cannot create {self._where(rel)}: {len(data)} bytes is over the {MAX_EXCLUSIVE_PUT} "
                                  "bytes one conditional PUT takes (exclusive creates never go multipart); "
                                  "write smaller shards (fewer --shard-sequences)")
            self.check_exclusive_create()
        return self._call("create", rel, create)

    def _put_if_absent(self, path: str, data: bytes) -> bool:
        # Always ONE put_object with If-None-Match: * (S3 takes up to 5 GiB in one PUT): never s3fs's
        # multipart path, whose conditional CompleteMultipartUpload the probe does not exercise and some
        # stores ignore. So the probe checks exactly the request every exclusive create sends.
        bucket, key, _ = self.fs.split_path(path)
        try:
            sync(self.fs.loop, self.fs._call_s3, "put_object", Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except FileExistsError:
            return False
        except OSError as e:
            if _precondition_failed(e):  # a 412 without its <Condition> element: the only condition sent
                return False
            raise
        return True

    # ---- compare-and-swap (a run's checkpoint pointer) -------------------------------------------
    def read_versioned(self, rel: str) -> tuple[bytes, str] | None:
        """The object and its version, None when absent: what `replace_if` compares against. On S3 the version
        is the ETag of the very GET that returned the bytes; elsewhere the sha256 of the bytes."""
        path = self._path(rel)
        if self.protocol == "s3":
            bucket, key, _ = self.fs.split_path(path)

            async def get() -> tuple[bytes, str]:
                r = await self.fs._call_s3("get_object", Bucket=bucket, Key=key)
                try:
                    return await r["Body"].read(), r["ETag"]
                finally:
                    r["Body"].close()

            try:
                return self._call("read", rel, lambda: sync(self.fs.loop, get))
            except ObjectNotFound:
                return None
        try:
            data = self.read_bytes(rel)
        except ObjectNotFound:
            return None
        return data, _digest(data)

    def replace_if(self, rel: str, data: bytes, version: str | None) -> bool:
        """Replace the object with `data` only if it is still at `version` (None: only if absent), in one atomic
        step; False when another writer changed it since it was read. S3: one PUT with If-Match (If-None-Match:
        * for None); a local folder: compare and rename under an exclusive lock on a hidden sibling file;
        memory://: under the process lock; other stores: compared, then written, with a warning (not atomic). A
        conditional PUT applied whose reply was lost finds its own bytes."""
        path = self._path(rel)

        def swap() -> bool:
            if self.protocol == "file":
                return _local_replace_if(path, data, version)
            if self.protocol != "s3":  # memory:// under the process lock; other stores: not atomic, said once
                if self.protocol != "memory":
                    _warn_once(f"{self.protocol}:// has no compare-and-swap here: {self._where(rel)} is compared, "
                               "then written (a writer landing in between could overwrite it; the run's lease "
                               "still keeps one writer)")
                with _MEMORY_LOCK if self.protocol == "memory" else contextlib.nullcontext():
                    cur = self.fs.cat_file(path) if self.fs.exists(path) else None
                    if (None if cur is None else _digest(cur)) != version:
                        return False
                    self.fs.pipe_file(path, data)
                    return True
            bucket, key, _ = self.fs.split_path(path)
            cond = {"IfMatch": version} if version is not None else {"IfNoneMatch": "*"}
            try:
                sync(self.fs.loop, self.fs._call_s3, "put_object", Bucket=bucket, Key=key, Body=data, **cond)
            except (FileExistsError, FileNotFoundError):
                return False
            except OSError as e:
                if _precondition_failed(e):
                    return False
                raise
            return True

        if self._call("replace", rel, swap):
            return True
        if self.protocol == "s3":  # a retry of a PUT the store applied (reply lost) fails its own condition
            got = self.read_versioned(rel)
            return got is not None and got[0] == data
        return False

    def check_exclusive_create(self) -> None:
        """Refuse (BucketError) if this S3 store ignores create-if-absent; probed once per S3 bucket.

        Manifest commits rely on `If-None-Match: *`: a store (or an s3fs older than 2025.7.0) that drops
        the condition lets racing commits overwrite each other's generation and lose it silently. The
        probe creates one key twice with exclusive create; the second must fail. Only a definite verdict
        is remembered: a probe that errs (after its retries) raises and the next exclusive create probes
        again."""
        name = self.root.split("/", 1)[0]
        verdicts = self.fs.__dict__.setdefault("_smt_exclusive_ok", {})  # lives with the (cached) filesystem
        with _PROBE_LOCK:
            if name not in verdicts:
                try:
                    verdicts[name] = self._probe_exclusive()
                except BucketError as e:
                    raise BucketError(f"cannot tell whether {self.protocol}://{name}/"
                                      f"{f' (endpoint {self.endpoint_url})' if self.endpoint_url else ''} honours "
                                      f"create-if-absent (If-None-Match: *), the probe failed: {one_line(e)}; "
                                      "nothing was written; retry (the next commit probes again)") from e
        if verdicts[name] is not True:
            raise BucketError(f"refusing to commit to {self._where(None)}: {verdicts[name]}")

    def _probe_exclusive(self) -> bool | str:
        """True, or a definite reason why this store cannot commit; raises BucketError when it cannot tell."""
        path = f"{self.root}/.smt-probe/create-exclusive-{uuid.uuid4().hex}"
        token = uuid.uuid4().hex.encode()  # this probe's own bytes: tell its own applied create from another's
        try:
            first = self._call("probe", None, lambda: self._put_if_absent(path, token))
            if not first:
                # A fresh random key "existed": our first create was applied and its reply lost, then the
                # retry found it (ours, if it holds our token), or the store's create-if-absent is broken.
                first = self._call("probe", None, lambda: self.fs.cat_file(path)) == token
            second = first and self._call("probe", None, lambda: self._put_if_absent(path, b"second"))
        finally:
            with contextlib.suppress(Exception):  # a leftover probe key is harmless
                self.fs.rm(path)
        if not first:
            return ("a probe key with a fresh random name already existed holding other bytes: the store's "
                    "create-if-absent is broken")
        if second:
            return ("the store ignores conditional puts (If-None-Match: *): a second exclusive create of a probe key "
                    "succeeded, so concurrent manifest commits would overwrite each other; use s3fs>=2025.7.0 "
                    "and a store with conditional writes (AWS S3, recent MinIO)")
        return True

    def write_tree(self, rel: str, files: dict[str, bytes]) -> bool:
        """Write a folder of files. Local: temp folder + rename, False if the folder already exists.

        Object stores have no folders: each object is written (each put is atomic) and True returned.
        """
        for name in files:
            check_relpath(name, "file name")
        if self.protocol != "file":
            for name, data in sorted(files.items()):
                self.write_bytes(f"{rel}/{name}", data)
            return True
        final = self._path(rel)
        parent, base = os.path.split(final)
        tmp = os.path.join(parent, f".{base}.tmp-{uuid.uuid4().hex[:12]}")

        def publish() -> bool:
            dirs = {tmp}
            for name, data in files.items():
                p = os.path.join(tmp, *name.split("/"))
                os.makedirs(os.path.dirname(p), exist_ok=True)
                dirs.add(os.path.dirname(p))
                _write_synced(p, data)
            for d in dirs:
                _fsync_dir(d)
            if os.path.exists(final):
                return False
            try:
                os.rename(tmp, final)
            except OSError:
                if os.path.exists(final):  # lost a race to an identical retry
                    return False
                raise
            _fsync_dir(parent)
            return True

        try:
            return self._call("write", rel, publish)
        finally:
            if os.path.exists(tmp):
                import shutil
                shutil.rmtree(tmp, ignore_errors=True)

    def remove(self, rel: str, recursive: bool = False) -> None:
        """Delete an object (or folder): checkpoint retention (`RunDir.prune`), tests and admin tools."""
        path = self._path(rel)
        self._call("remove", rel, lambda: self.fs.rm(path, recursive=recursive))

    def glob(self, pattern: str) -> list[str]:
        """Relative paths matching `pattern`. LISTS: for admin tools (inspect) and checkpoint retention, never
        the read path."""
        base = self.root.rstrip("/")
        hits = self._call("list", pattern, lambda: self.fs.glob(f"{base}/{pattern}"))
        prefix = base.lstrip("/") + "/"
        return sorted(h.lstrip("/")[len(prefix):] for h in hits if h.lstrip("/").startswith(prefix))


def _fsync_dir(path: str) -> None:
    # A rename or link is durable only once its directory is: without this a power loss can drop a
    # generation that was reported committed, or leave its name pointing at nothing.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


_WARNED: set[str] = set()


def _warn_once(msg: str) -> None:
    if msg not in _WARNED:
        _WARNED.add(msg)
        import warnings

        warnings.warn(msg, stacklevel=3)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _local_replace_if(path: str, data: bytes, version: str | None) -> bool:
    # Every replace_if of one object takes an exclusive flock on a hidden sibling file, then compares and
    # renames: two writers on one file system cannot both pass the compare.
    import fcntl

    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f".{name}.lock"), "ab") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            try:
                with open(path, "rb") as f:
                    cur: str | None = _digest(f.read())
            except FileNotFoundError:
                cur = None
            if cur != version:
                return False
            _local_atomic_write(path, data)
            return True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _local_atomic_write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        _write_synced(tmp, data)
        os.replace(tmp, path)
        _fsync_dir(os.path.dirname(path))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _local_exclusive_write(path: str, data: bytes) -> bool:
    # Write the full content under a temp name, then hard-link it into place: link() fails if the
    # target exists, so readers never see a half-written file and only one creator wins. The file is
    # fsynced before the link and the folder after it, so a create that returned True survives power loss.
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        _write_synced(tmp, data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        os.unlink(tmp)
        _fsync_dir(os.path.dirname(path))
        return True
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
