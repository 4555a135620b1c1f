"""One way to reach storage: a pyarrow FileSystem for a URI, plus a few helpers on top of it.

Every stage calls :func:`filesystem_for` so that a test (or a deployment) switches between AWS S3,
an S3-compatible server on loopback and a local folder by configuration alone.

Why a ``StorageConfig`` and not environment variables: pyarrow ignores ``AWS_ENDPOINT_URL``, so the
endpoint must be passed explicitly; keeping all knobs in one typed object lets the job spec carry
them. Fields left unset fall back to the AWS default credential chain (env, profile, instance role).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from urllib.parse import unquote, urlparse

import pyarrow.fs as pafs
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator


class StorageConfig(BaseModel):
    """How to reach object storage. Everything optional: unset means the AWS default chain."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint_override: str | None = Field(
        default=None, description='"host:port" of an S3-compatible server (e.g. "127.0.0.1:8333").'
    )
    scheme: Literal["http", "https"] | None = Field(
        default=None, description="Protocol for the endpoint; pyarrow defaults to https."
    )
    access_key: SecretStr | None = None
    secret_key: SecretStr | None = None
    session_token: SecretStr | None = None
    region: str | None = None
    connect_timeout_s: float | None = 10.0
    request_timeout_s: float | None = 60.0
    max_attempts: int = Field(default=5, ge=1, description="Retries for transient S3 errors.")

    @model_validator(mode="after")
    def _keys_come_in_pairs(self) -> "StorageConfig":
        if (self.access_key is None) != (self.secret_key is None):
            raise ValueError("access_key and secret_key must be given together (or both left unset)")
        return self


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object. ``path`` is the filesystem path (``bucket/key`` on S3), ``key`` is the
    path relative to the listed root. ``etag`` comes from S3 listings and is None on local disks."""

    path: str
    key: str
    size: int
    etag: str | None
    mtime: datetime | None


def is_s3_uri(uri: str) -> bool:
    return uri.startswith("s3://")


def filesystem_for(uri: str, storage: StorageConfig | None = None) -> tuple[pafs.FileSystem, str]:
    """Return ``(filesystem, path)`` for ``s3://bucket/prefix``, ``file:///abs`` or a local path.

    The returned path has no scheme and no trailing slash: ``bucket/prefix`` on S3, an absolute path
    locally (what pyarrow, and Ray Data's ``filesystem=`` argument, expect).
    """
    storage = storage or StorageConfig()
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"S3 URI without a bucket: {uri!r}")
        path = f"{parsed.netloc}/{parsed.path.lstrip('/')}".rstrip("/")
        return _s3_filesystem(storage), path
    if parsed.scheme == "file":
        return pafs.LocalFileSystem(), os.path.abspath(unquote(parsed.path)).rstrip("/") or "/"
    if parsed.scheme == "":
        return pafs.LocalFileSystem(), os.path.abspath(uri).rstrip("/") or "/"
    raise ValueError(f"Unsupported storage URI scheme {parsed.scheme!r} in {uri!r} (use s3:// or a local path)")


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def _s3_filesystem(storage: StorageConfig) -> pafs.S3FileSystem:
    kwargs: dict = {
        "access_key": _secret(storage.access_key),
        "secret_key": _secret(storage.secret_key),
        "session_token": _secret(storage.session_token),
        "region": storage.region,
        "scheme": storage.scheme,
        "endpoint_override": storage.endpoint_override,
        "connect_timeout": storage.connect_timeout_s,
        "request_timeout": storage.request_timeout_s,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=storage.max_attempts),
    }
    return pafs.S3FileSystem(**{k: v for k, v in kwargs.items() if v is not None})


def s3_client(storage: StorageConfig | None = None):
    """A boto3 S3 client configured like :func:`filesystem_for` (used where pyarrow lacks an API,
    e.g. ETags in listings)."""
    import boto3
    from botocore.config import Config

    storage = storage or StorageConfig()
    endpoint_url = None
    if storage.endpoint_override:
        endpoint_url = f"{storage.scheme or 'https'}://{storage.endpoint_override}"
    config = Config(
        retries={"max_attempts": storage.max_attempts, "mode": "standard"},
        connect_timeout=storage.connect_timeout_s,
        read_timeout=storage.request_timeout_s,
        # Custom endpoints (SeaweedFS, MinIO) serve buckets by path, not by virtual host.
        s3={"addressing_style": "path" if endpoint_url else "auto"},
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=_secret(storage.access_key),
        aws_secret_access_key=_secret(storage.secret_key),
        aws_session_token=_secret(storage.session_token),
        region_name=storage.region,
        config=config,
    )


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    # compression=None: never let a ".gz" suffix trigger transparent decompression.
    with fs.open_input_stream(path, compression=None) as stream:
        return stream.read()


def write_bytes_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write to a temporary sibling, then move it onto ``path`` so readers never see a partial file."""
    parent, _, name = path.rpartition("/")
    if fs.type_name == "local" and parent:
        fs.create_dir(parent, recursive=True)  # S3 has no directories; creating one adds a marker object
    tmp_path = f"{parent}/.tmp-{uuid.uuid4().hex}-{name}" if parent else f".tmp-{uuid.uuid4().hex}-{name}"
    try:
        with fs.open_output_stream(tmp_path, compression=None) as stream:
            stream.write(data)
        fs.move(tmp_path, path)
    except BaseException:
        try:
            fs.delete_file(tmp_path)
        except (FileNotFoundError, OSError):
            pass
        raise


def list_files(fs: pafs.FileSystem, path: str) -> list[pafs.FileInfo]:
    """All files below ``path`` (recursive), sorted by path; a missing root gives an empty list."""
    selector = pafs.FileSelector(path, recursive=True, allow_not_found=True)
    return sorted((info for info in fs.get_file_info(selector) if info.is_file), key=lambda i: i.path)


def list_objects(uri: str, storage: StorageConfig | None = None) -> list[ObjectInfo]:
    """List every object below ``uri`` once, with ETags where the store has them.

    S3 goes through ``ListObjectsV2`` (pyarrow's listing has no ETags); keys are returned raw,
    exactly as stored, so callers can reject unsafe ones before using them as paths.
    """
    storage = storage or StorageConfig()
    if not is_s3_uri(uri):
        fs, root = filesystem_for(uri, storage)
        out = []
        for info in list_files(fs, root):
            out.append(
                ObjectInfo(path=info.path, key=info.path[len(root) + 1 :], size=info.size, etag=None, mtime=info.mtime)
            )
        return out
    _, root = filesystem_for(uri, storage)
    bucket, _, prefix = root.partition("/")
    list_prefix = f"{prefix}/" if prefix else ""
    paginator = s3_client(storage).get_paginator("list_objects_v2")
    out = []
    for page in paginator.paginate(Bucket=bucket, Prefix=list_prefix):
        for item in page.get("Contents", []):
            key = item["Key"]
            if key.endswith("/"):
                continue  # directory marker objects carry no data
            out.append(
                ObjectInfo(
                    path=f"{bucket}/{key}",
                    key=key[len(list_prefix) :],
                    size=int(item["Size"]),
                    etag=item.get("ETag", "").strip('"') or None,
                    mtime=item.get("LastModified"),
                )
            )
    return sorted(out, key=lambda o: o.path)


def delete_prefix(fs: pafs.FileSystem, path: str) -> None:
    """Delete a file, or a folder with everything below it, down to the folder entries (missing is
    fine): stores with real directories (local disks, SeaweedFS) keep empty ones otherwise, and a
    folder's name can be personal data (a concept's)."""
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return
    if info.type == pafs.FileType.File:
        fs.delete_file(path)
        return
    entries = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    for entry in entries:
        if entry.is_file:
            fs.delete_file(entry.path)
    folders = [e.path for e in entries if e.type == pafs.FileType.Directory] + [path]
    for folder in sorted(folders, key=lambda f: f.count("/"), reverse=True):
        if fs.get_file_info(folder).type == pafs.FileType.Directory:
            fs.delete_dir(folder)


def join(path: str, *parts: str) -> str:
    """Join filesystem path segments with '/' (pyarrow paths always use '/')."""
    return "/".join([path.rstrip("/"), *(p.strip("/") for p in parts if p)])
