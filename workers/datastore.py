"""Where the bytes of datasets and results live: Redis, or a directory or object store.

Chunks (compressed Arrow IPC, ``frames.encode``) are stored under names such as
``datasets/<id>/p00001-c00000.arrow`` (built by :func:`workers.jobstore.chunk_name`;
records and metadata stay in Redis, in the job store). The store is one small
interface with two implementations:

- :class:`RedisDataStore`, the default: one Redis string per chunk, expiring
  with the records that name it;
- :class:`FileSystemDataStore` for ``DATA_STORE_URL`` values such as
  ``file:///shared/path`` (a volume every worker host mounts) or
  ``s3://bucket/prefix``: both go through ``pyarrow.fs``, so the code is one.
  A chunk is written to a temporary name and moved into place, so a reader
  never sees half a chunk.

Every method takes names, never paths a user chose: names are built from ids
the system issued.
"""

import contextlib
import logging
import shutil
import time
import uuid

import pyarrow.fs as pafs
import redis

log = logging.getLogger(__name__)

#: Redis key prefix of chunks kept in Redis (the job store's prefix, then ``blob``).
BLOB_PREFIX = "datajobs:blob:"


class StorageFull(Exception):
    """The store has no room for what is about to be written."""


class DataStore:
    """The interface: ``put``, ``get``, ``delete``, ``touch`` and ``has_room``."""

    def put(self, name, data):
        """Store ``data`` (bytes or a pyarrow Buffer) under ``name``, replacing what was there."""
        raise NotImplementedError

    def get(self, name):
        """The bytes stored under ``name``, or None when there are none (expired, deleted)."""
        raise NotImplementedError

    def delete(self, names):
        """Remove the chunks ``names`` (missing ones are fine)."""
        raise NotImplementedError

    def touch(self, names, ttl):
        """Keep ``names`` for another ``ttl`` seconds (where the store expires things itself)."""

    def has_room(self, nbytes):
        """False when writing ``nbytes`` more would fill the store."""
        return True

    def owners(self):
        """``(kind, id, age in seconds)`` of every job and dataset with chunks here, where the store cannot
        expire chunks itself (a directory); nothing for Redis, whose chunks expire with their records."""
        return ()

    def drop_owner(self, kind, owner_id):
        """Remove every chunk of a job or dataset (``kind`` ``job`` or ``dataset``)."""


class RedisDataStore(DataStore):
    """Chunks as Redis strings, each expiring after ``ttl`` seconds unless touched."""

    def __init__(self, client, ttl):
        self.redis, self.ttl = client, int(ttl)

    def put(self, name, data):
        self.redis.set(BLOB_PREFIX + name, memoryview(data) if not isinstance(data, bytes) else data, ex=self.ttl)

    def get(self, name):
        return self.redis.get(BLOB_PREFIX + name)

    def delete(self, names):
        names = list(names)
        for start in range(0, len(names), 500):
            self.redis.delete(*(BLOB_PREFIX + n for n in names[start : start + 500]))

    def touch(self, names, ttl):
        with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.expire(BLOB_PREFIX + name, int(ttl))
            pipe.execute()

    def has_room(self, nbytes):
        # With maxmemory set, Redis refuses writes past it (noeviction): find out before, not half way.
        try:
            info = self.redis.info("memory")
        except redis.exceptions.ResponseError:  # INFO disabled (some managed Redis), or fakeredis: cannot tell
            return True
        maxmemory = int(info.get("maxmemory") or 0)
        return not maxmemory or int(info["used_memory"]) + int(nbytes) <= maxmemory


class FileSystemDataStore(DataStore):
    """Chunks as files under a ``pyarrow.fs`` root: a local directory, a shared volume, or S3."""

    def __init__(self, url):
        self.url = url
        self.fs, self.root = pafs.FileSystem.from_uri(url)
        self.fs.create_dir(self.root, recursive=True)

    def _path(self, name):
        return f"{self.root.rstrip('/')}/{name}"

    def put(self, name, data):
        path = self._path(name)
        directory = path.rsplit("/", 1)[0]
        self.fs.create_dir(directory, recursive=True)
        temp = f"{directory}/.{uuid.uuid4().hex}.tmp"
        try:
            with self.fs.open_output_stream(temp) as out:
                out.write(data)
            self.fs.move(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                self.fs.delete_file(temp)
            raise

    def get(self, name):
        try:
            with self.fs.open_input_stream(self._path(name)) as stream:
                return stream.read()
        except FileNotFoundError:
            return None

    def delete(self, names):
        directories = set()
        for name in names:
            path = self._path(name)
            directories.add(path.rsplit("/", 1)[0])
            with contextlib.suppress(FileNotFoundError):
                self.fs.delete_file(path)
        for directory in directories:  # leave no empty directory per job or dataset behind
            with contextlib.suppress(OSError):
                if not self.fs.get_file_info(pafs.FileSelector(directory)):
                    self.fs.delete_dir(directory)

    def owners(self):
        now = time.time()
        for kind in ("job", "dataset"):
            selector = pafs.FileSelector(self._path(f"{kind}s"), allow_not_found=True)
            for info in self.fs.get_file_info(selector):
                if info.type == pafs.FileType.Directory:
                    modified = info.mtime.timestamp() if info.mtime else now
                    yield kind, info.base_name, now - modified

    def drop_owner(self, kind, owner_id):
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_dir(self._path(f"{kind}s/{owner_id}"))

    def has_room(self, nbytes):
        if isinstance(self.fs, pafs.LocalFileSystem):
            return shutil.disk_usage(self.root).free > nbytes
        return True  # object stores: the bucket's quota is the provider's to enforce


def open_store(url, redis_client, ttl):
    """The data store ``DATA_STORE_URL`` names: ``redis`` (or empty) for ``redis_client``, else a pyarrow.fs URL."""
    if not url or url == "redis":
        return RedisDataStore(redis_client, ttl)
    return FileSystemDataStore(url)


#: What a full store raises on write: Redis past ``maxmemory``, a disk with no space left.
FULL_ERRORS = (redis.exceptions.OutOfMemoryError,)
