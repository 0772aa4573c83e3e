"""Dataset, run and search folders that may live on shared storage.

Every DATA/RUN/TUNE location is either a local path or a URI that pyarrow understands
(``s3://bucket/prefix``, ``gs://bucket/prefix``, ``hdfs://...``), the same strings Ray
Data and Ray Train's ``storage_path`` take. Credentials and endpoints come from the
usual environment (``AWS_*`` variables, instance roles, ``GOOGLE_APPLICATION_CREDENTIALS``;
``AWS_ENDPOINT_URL`` points S3 at MinIO or another S3-compatible server).

A multi-node cluster needs shared storage: a local path works there only if it is the
same shared file system (NFS, EFS ...) on every node.

Writes are atomic: a file appears under its name only once it is complete (see
:func:`open_output`).
"""

from __future__ import annotations

import json
import os
import posixpath
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

PathLike = str | os.PathLike


def is_uri(path: PathLike) -> bool:
    return "://" in str(path)


def resolve(path: PathLike) -> str:
    """A URI unchanged, or an absolute local path: what to record and hand to Ray."""
    return str(path).rstrip("/") if is_uri(path) else str(Path(path).resolve())


def join(base: PathLike, *parts: str) -> str:
    if is_uri(base):
        return posixpath.join(str(base).rstrip("/"), *parts)
    return str(Path(base, *parts))


def name(path: PathLike) -> str:
    return posixpath.basename(str(path).rstrip("/"))


def parent(path: PathLike) -> str:
    """The folder holding ``path`` (a local path or URI)."""
    if is_uri(path):
        scheme, _, rest = str(path).rstrip("/").partition("://")
        return f"{scheme}://{posixpath.dirname(rest)}"
    return str(Path(path).parent)


def filesystem(path: PathLike) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it)."""
    if is_uri(path):
        return pafs.FileSystem.from_uri(str(path))
    return pafs.LocalFileSystem(), str(Path(path).resolve())


def _info(path: PathLike) -> pafs.FileInfo:
    fs, inner = filesystem(path)
    return fs.get_file_info(inner)


def exists(path: PathLike) -> bool:
    return _info(path).type != pafs.FileType.NotFound


def is_file(path: PathLike) -> bool:
    return _info(path).type == pafs.FileType.File


def list_files(folder: PathLike, suffix: str = "", recursive: bool = False) -> list[tuple[str, int]]:
    """Sorted (path or URI, size in bytes) of the files under ``folder``; [] if none."""
    fs, inner = filesystem(folder)
    infos = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True, recursive=recursive))
    base = str(folder).rstrip("/")
    out = []
    for info in infos:
        if info.type != pafs.FileType.File or not info.base_name.endswith(suffix):
            continue
        relative = posixpath.relpath(info.path, inner.rstrip("/"))
        out.append((join(base, *relative.split("/")), info.size))
    return sorted(out)


def is_empty_dir(folder: PathLike) -> bool:
    fs, inner = filesystem(folder)
    return not fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))


def make_dirs(folder: PathLike) -> None:
    fs, inner = filesystem(folder)
    fs.create_dir(inner, recursive=True)


def delete(path: PathLike) -> None:
    """Delete a file or a folder tree; nothing if it does not exist."""
    fs, inner = filesystem(path)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(inner)
    elif info.type == pafs.FileType.File:
        fs.delete_file(inner)


def read_bytes(path: PathLike) -> bytes:
    fs, inner = filesystem(path)
    try:
        with fs.open_input_stream(inner) as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None


def read_text(path: PathLike) -> str:
    return read_bytes(path).decode()


def read_json(path: PathLike) -> dict:
    return json.loads(read_text(path))


@contextmanager
def open_output(path: PathLike) -> Iterator[pa.NativeFile]:
    """A binary stream that becomes ``path`` only when the block exits without error.

    Locally: a temporary file in the same folder, renamed. For a URI: a local temporary
    file, uploaded afterwards (a pyarrow S3 stream would publish a half-written object
    on close, as it has no abort)."""
    # pa.OSFile rather than LocalFileSystem's stream: it exposes its file descriptor,
    # which release_written needs.
    if is_uri(path):
        with tempfile.TemporaryDirectory(prefix="speech-enhance-") as tmp:
            staged = os.path.join(tmp, name(path))
            with pa.OSFile(staged, "wb") as f:
                yield f
            upload(staged, path)
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    try:
        with pa.OSFile(str(tmp), "wb") as f:
            yield f
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def release_written(stream: pa.NativeFile) -> None:
    """Write-behind for a large file written once: start writing ``stream``'s dirty pages
    to disk and drop from the page cache the pages already written.

    Called after each chunk, it keeps only the last chunk or two of the file in memory.
    A build writes gigabytes that nothing reads back soon; left in the page cache they
    crowd out the rest, and every chunk needs fresh pages, which is slow where the OS
    hands free memory back to a hypervisor (a VM). Does nothing where the stream has no
    file descriptor or the OS has no ``posix_fadvise``."""
    if not hasattr(os, "posix_fadvise"):
        return
    try:
        fd = stream.fileno()
    except (OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return
    # POSIX_FADV_DONTNEED on Linux starts writeback of the dirty pages (without
    # waiting) and evicts the clean ones: the pages handed over by the previous call.
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def write_bytes(path: PathLike, data: bytes) -> None:
    with open_output(path) as f:
        f.write(data)


def write_text(path: PathLike, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: PathLike, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2, default=str))


def upload(local_file: PathLike, path: PathLike) -> None:
    """Copy a finished local file to ``path`` (atomically): a URI receives it directly,
    a local path through :func:`open_output`'s temporary file."""
    if is_uri(path):
        fs, inner = filesystem(path)
        pafs.copy_files(str(local_file), inner, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
        return
    with open(local_file, "rb") as src, open_output(path) as dst:
        while chunk := src.read(8 * 2**20):
            dst.write(chunk)
