"""Where a sweep's files live: a local path, a shared file system, or an s3:// / gs:// URI.

Everything goes through pyarrow's file systems, so the same code reads and writes all of them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from collections.abc import Callable

import pyarrow as pa
import pyarrow.fs as pafs

# Object stores have no atomic rename (a move is copy + delete), but a single PUT is atomic.
_OBJECT_STORES = frozenset({"s3", "gcs", "abfs"})


# The usual schemes of pyarrow's FileSystem.from_uri (it reads them case-sensitively): the ones
# an error names, and the ones `check_uri` passes without opening (s3:// would ask the network
# for the bucket's region, and a dry run stays offline).
SCHEMES = ("file", "s3", "gs", "gcs", "abfs", "abfss", "hdfs", "viewfs")


def check_uri(uri: str | os.PathLike) -> None:
    """ValueError naming the usual schemes, for a URI whose scheme pyarrow does not know."""
    text = os.fspath(uri)
    if "://" in text and text.partition("://")[0] not in SCHEMES:
        try:
            resolve(text)  # an unknown scheme fails at once, before any connection
        except OSError:  # a scheme pyarrow knows (local://, mock://); opening it is the run's to report
            pass


# pyarrow retries a failing GCS call for 15 minutes by default, so a command on a machine without
# network or credentials would say nothing that long; S3's retries end within seconds.
GCS_RETRY_LIMIT_S = 15


def resolve(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """The file system and the path inside it for a local path (relative allowed) or a URI;
    ValueError for a URI whose scheme pyarrow does not know, OSError for an object store that
    cannot be reached (s3:// asks for the bucket's region)."""
    text = os.fspath(uri)
    if "://" not in text:
        return pafs.LocalFileSystem(), os.path.abspath(text)
    opened = text
    if text.partition("://")[0] in ("gs", "gcs") and "retry_limit_seconds=" not in text:
        opened += ("&" if "?" in text else "?") + f"retry_limit_seconds={GCS_RETRY_LIMIT_S}"
    try:
        return pafs.FileSystem.from_uri(opened)
    except pa.ArrowInvalid:
        raise ValueError(f"storage {text}: pyarrow cannot open {text.partition('://')[0]}:// URIs; use a local or "
                         f"shared folder, or a URI starting with {', '.join(s + '://' for s in SCHEMES)}") from None


def join(uri: str | os.PathLike, *parts: str) -> str:
    """`uri/part/...` for local paths and URIs alike."""
    text = os.fspath(uri).rstrip("/")
    return "/".join([text, *parts])


# Tests inject storage faults into every process of a sweep (Ray's workers inherit the
# environment): "PART:ERRNO" makes each write to a path containing PART fail with that errno
# (ENOSPC, EACCES, EIO, ...) after its data went out, as a disk filling up would.
FAULT_ENV = "SWEEP_INJECT_WRITE_FAULT"


def _injected_fault(path: str) -> None:
    fault = os.environ.get(FAULT_ENV)
    if not fault:
        return
    part, _, name = fault.rpartition(":")
    if part in path:
        code = getattr(errno, name)
        raise OSError(code, f"{os.strerror(code)} (injected by {FAULT_ENV})", path)


def write_atomic(fs: pafs.FileSystem, path: str, write: Callable[[object], None]) -> None:
    """Call `write(stream)` so that readers see either the old file or the whole new one.

    Local and shared file systems: write a hidden temporary file beside the target (hidden
    names are skipped by pyarrow datasets and pandas) and rename it over the target. Object
    stores: one upload of the whole file, which is atomic there.
    """
    directory, name = path.rsplit("/", 1)
    fs.create_dir(directory, recursive=True)
    if fs.type_name in _OBJECT_STORES:
        # Written whole in memory first: a stream that fails half-way would still upload what it
        # had when closed. A PUT that fails leaves nothing.
        sink = pa.BufferOutputStream()
        write(sink)
        data = sink.getvalue()
        _injected_fault(path)
        with fs.open_output_stream(path) as stream:
            stream.write(data)
        return
    temp = f"{directory}/.{name}.{uuid.uuid4().hex}.tmp"
    try:
        with fs.open_output_stream(temp) as stream:
            write(stream)
            _injected_fault(path)
        fs.move(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # keep the original error
            fs.delete_file(temp)
        raise


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as stream:
        return stream.read()


def list_files(fs: pafs.FileSystem, directory: str, suffix: str) -> list[str]:
    """Base names of the visible (not hidden, not temporary) files in `directory` ending in `suffix`."""
    infos = fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
    return sorted(
        info.base_name
        for info in infos
        if info.type == pafs.FileType.File
        and info.base_name.endswith(suffix)
        and not info.base_name.startswith((".", "_"))
    )


def list_dirs(fs: pafs.FileSystem, directory: str, prefix: str) -> list[str]:
    """Base names of the sub-folders of `directory` whose names start with `prefix`."""
    infos = fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
    return sorted(
        info.base_name
        for info in infos
        if info.type == pafs.FileType.Directory and info.base_name.startswith(prefix)
    )


def delete(fs: pafs.FileSystem, path: str) -> None:
    """Remove a file if it is there."""
    with contextlib.suppress(FileNotFoundError):
        fs.delete_file(path)
