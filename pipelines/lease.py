"""Leases: one live job trains (and registers) a given concept artifact at a time.

Two submissions of the same job, or two jobs whose snapshots share an unchanged concept, would
otherwise train it twice and race to register two versions. Before training, a job takes a lease
per artifact it will make, `<work root>/_leases/<sha256 of <tenant>/<concept>/<digest>/<recipe>/<base>>.json`,
with a conditional write (S3 `If-None-Match: *`; a local folder: an exclusive create). The holder
renews its leases while it runs (`If-Match` on the last ETag) and removes them when the concept is
registered or the job ends. A lease whose holder stopped renewing expires after `ttl_s` and can be
taken over — again with `If-Match`, so of two jobs taking over only one wins.

AWS S3, MinIO and SeaweedFS all honour these conditions. A local folder serialises the
compare-and-swap with `fcntl.flock`, which is enough for processes on one machine (the demo).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from pipelines.storage import StorageConfig, filesystem_for, is_s3_uri, join, s3_client

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Holder:
    """Who holds a lease, until when (epoch seconds)."""

    owner: str  # unique per job process
    job_id: str
    run_id: str | None
    expires_at: float
    host: str = ""  # where the holding process runs, and its pid: a dead process on this host frees
    pid: int = 0  # its leases at once (`Leases(stale=...)`), others wait for the TTL

    def process_is_dead_here(self) -> bool:
        """The holder ran on this machine and its process is gone (killed, crashed)."""
        if self.host != os.uname().nodename or self.pid <= 0:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def describe(self) -> str:
        left = self.expires_at - time.time()
        return f"job {self.job_id} run {self.run_id or '?'} (lease {'expires in %.0fs' % left if left > 0 else 'expired'})"


class LeaseStore(Protocol):
    """Compare-and-swap on small objects; every method returns None / False when its condition fails."""

    def create(self, key: str, body: bytes) -> str | None: ...
    def read(self, key: str) -> tuple[bytes, str] | None: ...
    def replace(self, key: str, body: bytes, etag: str) -> str | None: ...
    def delete(self, key: str) -> None: ...


class S3LeaseStore:
    def __init__(self, uri: str, storage: StorageConfig):
        _, root = filesystem_for(uri, storage)
        self.bucket, _, self.prefix = root.partition("/")
        self.client = s3_client(storage)

    def _key(self, key: str) -> str:
        return join(self.prefix, key) if self.prefix else key

    def _put(self, key: str, body: bytes, **condition) -> str | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=body, **condition)["ETag"]
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                return None
            raise

    def create(self, key: str, body: bytes) -> str | None:
        return self._put(key, body, IfNoneMatch="*")

    def read(self, key: str) -> tuple[bytes, str] | None:
        try:
            got = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except self.client.exceptions.NoSuchKey:
            return None
        return got["Body"].read(), got["ETag"]

    def replace(self, key: str, body: bytes, etag: str) -> str | None:
        return self._put(key, body, IfMatch=etag)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))


class LocalLeaseStore:
    """A folder; ETags are content versions (a counter); flock makes each operation atomic."""

    def __init__(self, uri: str):
        _, root = filesystem_for(uri)
        self.root = Path(root)

    def _locked(self, key: str):
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_name(path.name + ".lock"), "a")
        fcntl.flock(lock, fcntl.LOCK_EX)
        return path, lock

    def create(self, key: str, body: bytes) -> str | None:
        path, lock = self._locked(key)
        with lock:
            if path.exists():
                return None
            path.write_bytes(body)
            return self._etag(path)

    def read(self, key: str) -> tuple[bytes, str] | None:
        path, lock = self._locked(key)
        with lock:
            return (path.read_bytes(), self._etag(path)) if path.exists() else None

    def replace(self, key: str, body: bytes, etag: str) -> str | None:
        path, lock = self._locked(key)
        with lock:
            if not path.exists() or self._etag(path) != etag:
                return None
            path.write_bytes(body)
            return self._etag(path)

    def delete(self, key: str) -> None:
        path, lock = self._locked(key)
        with lock:  # the lock file stays: a process may be waiting on it
            path.unlink(missing_ok=True)

    @staticmethod
    def _etag(path: Path) -> str:
        return f"{path.stat().st_mtime_ns}-{path.stat().st_size}-{path.stat().st_ino}"


def lease_store(uri: str, storage: StorageConfig) -> LeaseStore:
    return S3LeaseStore(uri, storage) if is_s3_uri(uri) else LocalLeaseStore(uri)


class Leases:
    """The leases one job holds; `renew_forever` in a thread keeps them alive while the job runs.

        leases = Leases(lease_store(root, storage), job_id="j", run_id="r", ttl_s=300)
        other = leases.acquire(subpath)   # None: ours now; else the Holder that has it
        ...
        leases.release(subpath)
    """

    def __init__(self, store: LeaseStore, job_id: str, run_id: str | None, ttl_s: float, stale_dead_local: bool = False):
        self.store, self.job_id, self.run_id, self.ttl_s = store, job_id, run_id, ttl_s
        # Also take over a live lease whose holder ran on this machine and whose process is gone.
        self.stale_dead_local = stale_dead_local
        self.owner = f"{job_id}:{run_id}:{uuid.uuid4().hex[:12]}@{os.uname().nodename}"
        self.held: dict[str, str] = {}  # key -> our last ETag
        self._lock = threading.Lock()
        self.subpaths: dict[str, str] = {}  # key -> the subpath it stands for
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def key(subpath: str) -> str:
        # A digest, not the path: a lease's name must not name the concept (nothing to delete with it).
        return hashlib.sha256(subpath.encode()).hexdigest()[:40] + ".json"

    def _body(self) -> bytes:
        holder = Holder(self.owner, self.job_id, self.run_id, time.time() + self.ttl_s, os.uname().nodename, os.getpid())
        return json.dumps(asdict(holder)).encode()

    def acquire(self, subpath: str) -> Holder | None:
        """Take the lease of `subpath`; None when it is ours, else the live holder."""
        key = self.key(subpath)
        for _ in range(3):  # lost a race to a takeover: look again
            etag = self.store.create(key, self._body())
            if etag is not None:
                self._hold(key, subpath, etag)
                return None
            current = self.store.read(key)
            if current is None:
                continue  # released between our create and read
            body, etag = current
            holder = Holder(**json.loads(body))
            if holder.owner == self.owner:
                self._hold(key, subpath, etag)
                return None
            if not self._expired(holder):
                return holder
            new_etag = self.store.replace(key, self._body(), etag)  # expired: take it over
            if new_etag is not None:
                log.warning("took over the expired lease of %s from %s", subpath, holder.describe())
                self._hold(key, subpath, new_etag)
                return None
        current = self.store.read(key)
        return Holder(**json.loads(current[0])) if current else None

    def _hold(self, key: str, subpath: str, etag: str) -> None:
        with self._lock:
            self.held[key] = etag
            self.subpaths[key] = subpath

    def holder(self, subpath: str) -> Holder | None:
        """Who holds `subpath` now (None: nobody, or an expired lease)."""
        current = self.store.read(self.key(subpath))
        if current is None:
            return None
        holder = Holder(**json.loads(current[0]))
        return None if self._expired(holder) else holder

    def _expired(self, holder: Holder) -> bool:
        return holder.expires_at <= time.time() or (self.stale_dead_local and holder.process_is_dead_here())

    def renew(self) -> list[str]:
        """Extend every held lease; returns the subpaths lost (taken over after we failed to renew)."""
        lost = []
        with self._lock:
            held = dict(self.held)
        for key, etag in held.items():
            new_etag = self.store.replace(key, self._body(), etag)
            with self._lock:
                if new_etag is None:
                    self.held.pop(key, None)
                    lost.append(self.subpaths.get(key, key))
                elif key in self.held:
                    self.held[key] = new_etag
        for subpath in lost:
            log.error("lost the lease of %s (not renewed in time; another job may train it)", subpath)
        return lost

    def release(self, subpath: str) -> None:
        key = self.key(subpath)
        with self._lock:
            self.subpaths.pop(key, None)
            if self.held.pop(key, None) is None:
                return
        self.store.delete(key)

    def release_all(self) -> None:
        with self._lock:
            subpaths = [self.subpaths.get(key, key) for key in self.held]
        for subpath in subpaths:
            self.release(subpath)

    def start_renewing(self) -> None:
        """Renew every ttl/3 seconds in a daemon thread until `stop`."""
        def loop():
            while not self._stop.wait(self.ttl_s / 3):
                try:
                    self.renew()
                except Exception:  # noqa: BLE001 - a store hiccup: the next round tries again before expiry
                    log.warning("could not renew leases; retrying", exc_info=True)

        self._thread = threading.Thread(target=loop, name="lease-renewal", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.release_all()
