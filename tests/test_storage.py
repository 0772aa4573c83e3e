"""Local paths and s3:// URIs behave the same through speech_enhance.pipeline.storage (no Ray)."""

import os

import pyarrow as pa
import pytest

from speech_enhance.pipeline import storage


@pytest.fixture(params=["local", "s3"])
def base(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "store")
    bucket = request.getfixturevalue("s3_server")
    return f"{bucket}/{tmp_path.name}"


def test_write_read_list_delete(base):
    assert storage.is_empty_dir(base) and not storage.exists(base)
    storage.write_json(storage.join(base, "a.json"), {"x": 1})
    storage.write_bytes(storage.join(base, "sub", "b.parquet"), b"12345")
    storage.write_text(storage.join(base, "sub", "deeper", "c.parquet"), "abc")
    assert storage.read_json(storage.join(base, "a.json")) == {"x": 1}
    assert storage.parent(storage.join(base, "sub", "b.parquet")) == storage.join(base, "sub")
    assert storage.is_file(storage.join(base, "a.json")) and not storage.is_file(storage.join(base, "sub"))
    assert storage.list_files(storage.join(base, "sub"), ".parquet") == [(storage.join(base, "sub", "b.parquet"), 5)]
    assert [p for p, _ in storage.list_files(base, ".parquet", recursive=True)] == [
        storage.join(base, "sub", "b.parquet"), storage.join(base, "sub", "deeper", "c.parquet")]
    storage.delete(storage.join(base, "sub"))
    assert storage.list_files(base, recursive=True) == [(storage.join(base, "a.json"), 12)]
    with pytest.raises(FileNotFoundError, match="b.parquet: no such file"):
        storage.read_bytes(storage.join(base, "sub", "b.parquet"))


def test_failed_write_leaves_nothing(base):
    target = storage.join(base, "half.bin")
    with pytest.raises(RuntimeError), storage.open_output(target) as f:
        f.write(b"partial")
        raise RuntimeError("interrupted")
    assert not storage.exists(target)
    assert storage.list_files(base, recursive=True) == []  # no temp file left behind either


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise on this OS")
def test_release_written_advises_the_kernel_on_the_file_being_written(base, monkeypatch):
    advised = []
    monkeypatch.setattr(os, "posix_fadvise", lambda *args: advised.append(args))
    target = storage.join(base, "big.bin")
    with storage.open_output(target) as f:
        f.write(b"x" * 4096)
        storage.release_written(f)
        fd = f.fileno()
    assert advised == [(fd, 0, 0, os.POSIX_FADV_DONTNEED)]
    assert storage.read_bytes(target) == b"x" * 4096
    storage.release_written(pa.BufferOutputStream())  # no file descriptor: nothing to do
    assert len(advised) == 1
