"""Sources that change while their stem is archived: one more try, then a failure."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from stemzip.archive import StemJob, zip_stem
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
