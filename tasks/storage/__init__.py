"""Storage: S3 (boto3) and local paths, atomic publish with a sha256 manifest, verified fetch."""

from tasks.storage import lock
from tasks.storage.cache import cache_root, clean_leftovers, evict_cache
from tasks.storage.fetch import fetch_tree
from tasks.storage.manifest import (
    MANIFEST_NAME,
    MANIFEST_SCHEMA,
    IntegrityError,
    Manifest,
    PublishConflictError,
    digest_tree,
    read_manifest,
    sha256_file,
    tree_digest,
)
from tasks.storage.objects import (
    delete_tree,
    exists,
    get_bytes,
    get_json,
    list_keys,
    list_objects,
    put_file,
    put_json,
)
from tasks.storage.publish import publish_tree
from tasks.storage.s3 import (
    DEFAULT_BUCKET,
    DEFAULT_REGION,
    MAX_PARALLEL_TRANSFERS,
    S3Settings,
    configure_s3,
    current_s3_settings,
    default_run_root,
    s3_client,
    using_s3,
)
from tasks.storage.uris import (
    allowed_prefixes,
    check_allowed,
    is_s3,
    is_under,
    join_uri,
    parse_s3_uri,
)

__all__ = [
    "allowed_prefixes",
    "check_allowed",
    "is_under",
    "DEFAULT_BUCKET",
    "DEFAULT_REGION",
    "MANIFEST_NAME",
    "MANIFEST_SCHEMA",
    "MAX_PARALLEL_TRANSFERS",
    "IntegrityError",
    "Manifest",
    "PublishConflictError",
    "S3Settings",
    "cache_root",
    "clean_leftovers",
    "configure_s3",
    "current_s3_settings",
    "default_run_root",
    "delete_tree",
    "digest_tree",
    "evict_cache",
    "exists",
    "fetch_tree",
    "get_bytes",
    "get_json",
    "is_s3",
    "join_uri",
    "list_keys",
    "list_objects",
    "parse_s3_uri",
    "publish_tree",
    "put_file",
    "put_json",
    "read_manifest",
    "s3_client",
    "sha256_file",
    "lock",
    "tree_digest",
    "using_s3",
]
