"""Paths and files: formats by extension, the output checks, atomic files, checksums.

Readers are :mod:`harvester.sources`, writers :mod:`harvester.outputs`; both
take the format from the file's extension, decided here.
"""

import contextlib
import hashlib
import json
import os
import re
import uuid
from urllib.parse import urlsplit

from harvester.errors import InputError

# The one CSV formula rule lives in harvester.formulas (the gateway's CSV download uses it too);
# these names are kept here for code that imported them from harvester.io.
from harvester.formulas import FORMULA_CHARS, PLAIN_NUMBER, neutralise_formula  # noqa: F401

#: Source formats by extension.
READ_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".arrows": "arrow",
}
#: Output formats by extension. ``.arrow`` is an Arrow IPC file, ``.arrows`` an Arrow IPC stream.
WRITE_FORMATS = {
    ".jsonl": "jsonl",
    ".csv": "csv",
    ".json": "json",
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".arrows": "arrows",
}


def is_url(source):
    return urlsplit(str(source)).scheme in ("http", "https")


#: A URL's userinfo (``user:password@``) and its query or fragment, where credentials and signatures live.
_SECRET_PARTS = re.compile(r"(?<=://)[^/\s@]+@|(?<=[^\s?#])[?#][^\s'\"]*")


def shown(source):
    """``source`` as it may be logged, printed or kept in a manifest: a URL without its userinfo, query and
    fragment (a presigned URL's signature, a password); a path as it is. The SHA-256 of the data identifies
    a source whatever its URL said."""
    return redact_urls(str(source)) if is_url(source) else str(source)


def redact_urls(text):
    """``text`` with every URL's userinfo, query and fragment cut out (see :func:`shown`)."""
    return _SECRET_PARTS.sub("", text)


def _format(name, formats, what):
    path = urlsplit(str(name)).path if is_url(name) else name
    ext = os.path.splitext(str(path))[1].lower()
    try:
        return formats[ext]
    except KeyError:
        known = ", ".join(formats)
        raise InputError(f"Cannot tell the format of {what} {name!r}: its extension must be one of {known}.") from None


def source_format(source):
    """Return the format of a source (``csv``, ``tsv``, ``json``, ``jsonl``, ``parquet`` or ``arrow``) from its extension.

    Raises:
        InputError: the extension is not a readable format.
    """
    return _format(source, READ_FORMATS, "source")


def output_format(path):
    """Return the format of an output path (``jsonl``, ``csv``, ``json``, ``parquet``, ``arrow`` or ``arrows``).

    Raises:
        InputError: the extension is not a writable format.
    """
    return _format(path, WRITE_FORMATS, "output")


def check_output(path, *, source=None, force=False):
    """Return the format of ``path`` after checking it can be written there, before any work is done.

    Missing directories are fine: the writers create them.

    Args:
        source: the source of the run (path or URL), or None: the output may never be the source.
        force: write over an existing output (and its manifest). Without it an existing
            output is refused.

    Raises:
        InputError: unknown extension, ``path`` is a directory, a file stands where a
            directory should be, ``path`` is the source, or it exists and ``force`` is false.
    """
    fmt = output_format(path)
    if os.path.isdir(path):
        raise InputError(f"Cannot write {path}: it is a directory.")
    if source is not None and not is_url(source) and _same_file(path, source):
        raise InputError(f"Cannot write {path}: it is the source. Choose another --output.")
    if os.path.lexists(path) and not force:
        raise InputError(f"Cannot write {path}: it exists. Pass --force to replace it.")
    ancestor = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise InputError(f"Cannot write {path}: {ancestor} is a file, not a directory.")
    return fmt


def _same_file(a, b):
    # samefile sees through hard links and symbolic links; realpath covers a source that does not exist yet.
    with contextlib.suppress(OSError):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def write_json(value, path):
    """Write one JSON document to ``path`` atomically, indented, UTF-8."""
    try:
        with atomic_open(path, "w", encoding="utf-8") as f:
            json.dump(value, f, ensure_ascii=False, indent=2)
            f.write("\n")
    except OSError as exc:
        raise InputError(f"Cannot write {path}: {exc.strerror or exc}.") from None


def temporary_path(path):
    """Return a new path beside ``path`` for a file that becomes ``path`` once complete (hidden, ``.tmp``)."""
    directory, base = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{base}.{uuid.uuid4().hex[:8]}.tmp")


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success move the file written there onto ``path``, else remove it.

    Missing directories are created. Whoever writes the temporary file closes it
    before the block ends; it is synced to disk before the move.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temp = temporary_path(path)
    try:
        yield temp
        fd = os.open(temp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


@contextlib.contextmanager
def atomic_open(path, mode, **kwargs):
    """Open a temporary file beside ``path``; on success move it onto ``path``, else remove it."""
    with atomic_path(path) as temp:
        with open(temp, mode.replace("w", "x"), **kwargs) as f:
            yield f


def sha256_file(path, chunk=1024 * 1024):
    """Return ``(SHA-256 as hex, size in bytes)`` of a file, reading it ``chunk`` bytes at a time."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size
