"""storage: target sets in a bucket — write-once shards, manifest generations, a reader that never lists."""
from storage.bucket import Bucket
from storage.errors import (
                            BucketError,
                            FingerprintMismatch,
                            ManifestError,
                            ObjectNotFound,
                            ShardError,
                            StorageError,
)
from storage.manifest import Generation, ShardEntry, commit, target_set_path
from storage.reader import TargetSet
from storage.schema import SCHEMA_VERSION, Pairs, Segments, Transitions
from storage.writer import TargetSetWriter, write_shard

__all__ = [
                            "SCHEMA_VERSION",
                            "Bucket",
                            "BucketError",
                            "FingerprintMismatch",
                            "Generation",
                            "ManifestError",
                            "ObjectNotFound",
                            "Pairs",
                            "Segments",
                            "ShardEntry",
                            "ShardError",
                            "StorageError",
                            "TargetSet",
                            "TargetSetWriter",
                            "Transitions",
                            "commit",
                            "target_set_path",
                            "write_shard",
]
