"""Bucket fixtures for the storage tests; loaded with `pytest_plugins`, never imported directly."""
from __future__ import annotations

import uuid

import pytest

from storage.bucket import Bucket
from storage.manifest import target_set_path
from tests.storage_data import CORPUS, FP


@pytest.fixture(params=["local", "memory", "s3"])
def root_bucket(request, tmp_path) -> Bucket:
    """An empty bucket root on a temporary folder, memory://, or the moto S3 endpoint."""
    if request.param == "local":
        yield Bucket.from_url(str(tmp_path / "bucket"), retries=1)
    elif request.param == "memory":
        b = Bucket.from_url(f"memory://t-{uuid.uuid4().hex[:10]}", retries=1)
        yield b
        if b.fs.exists(b.root):
            b.fs.rm(b.root, recursive=True)
    else:
        url, endpoint = request.getfixturevalue("s3_bucket")
        yield Bucket.from_url(url, endpoint_url=endpoint, retries=1)


@pytest.fixture
def target(root_bucket) -> Bucket:
    """A bucket rooted at targets/<FP>/<CORPUS>."""
    return root_bucket.child(target_set_path(FP, CORPUS))


@pytest.fixture
def s3_proxy(s3_bucket):
    """A fresh S3 bucket seen through a fault-injecting proxy (tests/s3_proxy.py) in front of the moto
    endpoint; yields (bucket_url, proxy). Point clients at `proxy.url`."""
    from tests.s3_proxy import S3FaultProxy

    url, endpoint = s3_bucket
    proxy = S3FaultProxy(endpoint)
    yield url, proxy
    proxy.close()
