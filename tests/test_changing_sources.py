"""Sources that change while their stem is archived: one more try, then a failure."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path
from zlib import crc32

import pytest

from stemzip.archive import ArchiveOptions, StemJob, zip_stem
from stemzip.results import Status

from .conftest import archive_contents, crc_of


def _stem_with_big_file(folder: Path) -> tuple[StemJob, Path]:
    small = folder / "run1_a.csv"
    small.write_text("t,x\n0,1\n")
    big = folder / "run1_big.csv"
    with big.open("wb") as sparse:
        sparse.truncate(512 << 20)  # a second or so to read, no disk
    job = StemJob(
        stem="run1",
        files=(str(small), str(big)),
        archive_path=str(folder / "run1.zip"),
    )
    return job, big


def _touch_while_archived(
    folder: Path, source: Path, times: int, stop: threading.Event
) -> threading.Thread:
    """Change ``source``'s date whenever a new temporary archive appears."""

    def touch() -> None:
        seen: set[Path] = set()
        while len(seen) < times and not stop.is_set():
            for part in set(folder.glob(".run1.zip.*.part")) - seen:
                time.sleep(0.1)  # well into the read of the big file
                os.utime(source, (time.time(), time.time() - 3600 * len(seen)))
                seen.add(part)
            time.sleep(0.01)

    thread = threading.Thread(target=touch, daemon=True)
    thread.start()
    return thread


def test_file_changed_once_is_read_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    job, big = _stem_with_big_file(tmp_path)
    stop = threading.Event()

    toucher = _touch_while_archived(tmp_path, big, 1, stop)
    result = zip_stem(job)
    stop.set()
    toucher.join(timeout=5)

    assert result.status is Status.ZIPPED, result.error
    assert "changed while it was being archived" in caplog.text
    assert "reading its files once more" in caplog.text
    expected = {Path(f).name: crc_of(Path(f)) for f in job.files}
    assert archive_contents(Path(job.archive_path)) == expected
    assert not list(tmp_path.glob(".*.part"))


def test_file_that_keeps_changing_fails_its_stem(tmp_path: Path) -> None:
    job, big = _stem_with_big_file(tmp_path)
    stop = threading.Event()

    toucher = _touch_while_archived(tmp_path, big, 2, stop)
    result = zip_stem(job)
    stop.set()
    toucher.join(timeout=5)

    assert result.status is Status.FAILED
    assert "run1_big.csv' changed while it was being archived" in str(result.error)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run1_a.csv", "run1_big.csv"]


def test_source_changed_after_it_was_read_is_not_deleted(tmp_path: Path) -> None:
    job, _ = _stem_with_big_file(tmp_path)
    small = Path(job.files[0])
    job = dataclasses.replace(job, options=ArchiveOptions(verify=True, after="delete"))
    stop = threading.Event()

    def append_while_archived() -> None:
        # run1_a.csv is read first; a line added while run1_big.csv is read
        # is in no archive
        while not stop.is_set():
            if list(tmp_path.glob(".run1.zip.*.part")):
                time.sleep(0.1)
                with small.open("a") as more:
                    more.write("1,2\n")
                return
            time.sleep(0.01)

    writer = threading.Thread(target=append_while_archived, daemon=True)
    writer.start()
    result = zip_stem(job)
    stop.set()
    writer.join(timeout=5)

    assert result.status is Status.FAILED
    assert "['run1_a.csv'] changed after they were archived" in str(result.error)
    assert "so no source was deleted" in str(result.error)
    assert small.read_text() == "t,x\n0,1\n1,2\n", "the added line is kept"
    assert Path(job.files[1]).exists()
    # the archive holds the file as it was read, and is reported
    assert result.zip_file_path == job.archive_path
    assert archive_contents(Path(job.archive_path))["run1_a.csv"] == crc32(
        b"t,x\n0,1\n"
    )
