from __future__ import annotations

import fcntl
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from pytest_mock import MockerFixture

from stemzip import archive as archive_module
from stemzip.archive import (
    ArchiveOptions,
    StemJob,
    archiving_for,
    remove_partial_files,
    stop_run,
    stopping_writers,
    verify_archive,
    write_archive,
    zip_stem,
)
from stemzip.errors import (
    ArchiveVerificationError,
    ConfigError,
    DamagedArchiveError,
    NotAnArchiveError,
    SourceChangedError,
)
from stemzip.results import Status

from .conftest import archive_contents, crc_of, earlier_archive

ALL_OPTIONS = [
    pytest.param(ArchiveOptions(compression="stored"), id="stored"),
    pytest.param(ArchiveOptions(), id="deflated-default"),
    pytest.param(ArchiveOptions(engine="isal", compresslevel=0), id="isal-0"),
    pytest.param(ArchiveOptions(engine="zlib"), id="zlib-default"),
    pytest.param(ArchiveOptions(engine="zlib", compresslevel=1), id="zlib-1"),
    pytest.param(ArchiveOptions(engine="zlib", compresslevel=9), id="zlib-9"),
    pytest.param(ArchiveOptions(compression="bzip2", compresslevel=1), id="bzip2"),
    pytest.param(ArchiveOptions(compression="lzma"), id="lzma"),
]


def _job_of(sources: list[Path], target: Path, options: ArchiveOptions) -> StemJob:
    return StemJob("run1", tuple(str(p) for p in sources), str(target), options)


def _named(paths: list[Path]) -> list[tuple[Path, str]]:
    return [(path, path.name) for path in paths]


@pytest.fixture
def sources(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "data"
    folder.mkdir()
    rows = "".join(f"{i * 0.1:.1f},{i * 3.7:.6f},{-i:.3f}\n" for i in range(20000))
    paths = [folder / "run1_b.csv", folder / "run1_a.csv", folder / "run1_empty.csv"]
    paths[0].write_text("time,fx,fy\n" + rows)
    paths[1].write_bytes(os.urandom(3 << 20))
    paths[2].write_bytes(b"")
    return sorted(paths)


@pytest.mark.parametrize("options", ALL_OPTIONS)
def test_members_read_back_with_source_crcs(
    tmp_path: Path, sources: list[Path], options: ArchiveOptions
) -> None:
    target = tmp_path / "run1.zip"

    read = write_archive(target, _named(sources), options)

    assert read == sum(path.stat().st_size for path in sources)
    assert archive_contents(target) == {path.name: crc_of(path) for path in sources}
    with zipfile.ZipFile(target) as archive:
        assert [info.filename for info in archive.infolist()] == [
            p.name for p in sources
        ]
        expected = archive_module.COMPRESSION_METHODS[options.compression]
        assert {info.compress_type for info in archive.infolist()} == {expected}
    if shutil.which("unzip") and options.compression != "lzma":
        # Info-ZIP's unzip reads every method but the lzma one here
        subprocess.run(["unzip", "-tq", str(target)], check=True)


def test_deflate_compresses_text(tmp_path: Path, sources: list[Path]) -> None:
    text = [path for path in sources if path.name == "run1_b.csv"]
    target = tmp_path / "run1.zip"

    write_archive(target, _named(text), ArchiveOptions())

    assert target.stat().st_size < text[0].stat().st_size / 2


def test_zlib_fallback_when_isal_is_missing(
    tmp_path: Path, sources: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # the isal package cannot be uninstalled for one test; hide it instead
    monkeypatch.setattr(archive_module, "isal_zlib", None)
    options = ArchiveOptions()

    write_archive(tmp_path / "run1.zip", _named(sources), options)

    assert archive_module.available_engine() == "zlib"
    assert archive_contents(tmp_path / "run1.zip") == {
        p.name: crc_of(p) for p in sources
    }
    with pytest.raises(ConfigError, match="isal package is not installed"):
        ArchiveOptions(engine="isal").check()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param(ArchiveOptions(compression="zstd"), "not one of", id="method"),
        pytest.param(ArchiveOptions(engine="fast"), "archive.engine", id="engine"),
        pytest.param(
            ArchiveOptions(engine="isal", compresslevel=4), r"outside 0\.\.3", id="isal"
        ),
        pytest.param(
            ArchiveOptions(engine="zlib", compresslevel=10),
            r"outside 0\.\.9",
            id="zlib",
        ),
        pytest.param(
            ArchiveOptions(compression="stored", compresslevel=1),
            "must be null",
            id="stored-level",
        ),
    ],
)
def test_bad_options_are_refused(options: ArchiveOptions, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        options.check()


def test_failure_leaves_previous_archive_and_no_partial_file(
    tmp_path: Path, sources: list[Path]
) -> None:
    target = tmp_path / "run1.zip"
    write_archive(target, _named(sources[:1]), ArchiveOptions())
    before = target.read_bytes()

    with pytest.raises(FileNotFoundError):
        write_archive(
            target, _named([*sources, tmp_path / "missing.csv"]), ArchiveOptions()
        )

    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "run1.zip"]


def test_source_read_differs_from_its_size(tmp_path: Path) -> None:
    # /proc files report size 0 but read as text: a real source whose bytes
    # do not match what stat said
    source = Path("/proc/self/status")
    if not source.exists():
        pytest.skip("needs /proc")
    target = tmp_path / "run1.zip"

    with pytest.raises(SourceChangedError, match="changed while it was being archived"):
        write_archive(target, _named([source]), ArchiveOptions())

    assert list(tmp_path.iterdir()) == []


def test_dates_outside_zip_range_are_clamped_and_sources_untouched(
    tmp_path: Path,
) -> None:
    old = tmp_path / "run1_old.csv"
    new = tmp_path / "run1_new.csv"
    old.write_text("a\n")
    new.write_text("b\n")
    os.utime(old, (0, 0))  # 1970
    os.utime(new, (4_500_000_000, 4_500_000_000))  # 2112
    stamps = {p: p.stat().st_mtime_ns for p in (old, new)}

    write_archive(tmp_path / "run1.zip", _named([new, old]), ArchiveOptions())

    with zipfile.ZipFile(tmp_path / "run1.zip") as archive:
        assert archive.getinfo("run1_old.csv").date_time == (1980, 1, 1, 0, 0, 0)
        # the last moment the format holds, in its 2-second steps
        assert archive.getinfo("run1_new.csv").date_time == (2107, 12, 31, 23, 59, 58)
    assert {p: p.stat().st_mtime_ns for p in (old, new)} == stamps


def test_zip_stem_reports_failure_against_its_stem(tmp_path: Path) -> None:
    job = StemJob(
        stem="run1",
        files=(str(tmp_path / "gone.csv"),),
        archive_path=str(tmp_path / "run1.zip"),
    )

    result = zip_stem(job)

    assert result.status is Status.FAILED
    assert result.stem == "run1"
    assert result.error is not None and "gone.csv" in result.error
    assert result.traceback is not None and "FileNotFoundError" in result.traceback
    assert not (tmp_path / "run1.zip").exists()


def test_source_that_became_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    # opening a FIFO with no writer would block for ever
    fifo = tmp_path / "run1_pipe.csv"
    os.mkfifo(fifo)
    job = StemJob(stem="run1", files=(str(fifo),), archive_path=str(tmp_path / "r.zip"))

    result = zip_stem(job, timeout=None)

    assert result.status is Status.FAILED
    assert result.error is not None and "no longer a regular file" in result.error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run1_pipe.csv"]


def test_memory_stays_flat_for_a_2_gib_member(tmp_path: Path) -> None:
    source = tmp_path / "run1_big.csv"
    with source.open("wb") as sparse:
        sparse.truncate(2 << 30)  # holes: no disk used
    # and members that do not compress, each small enough to be held in
    # memory on its own, so an archive assembled in memory before it is
    # written would show in the peak
    noise = []
    for number in range(40):
        path = tmp_path / f"run1_noise{number:02d}.csv"
        path.write_bytes(os.urandom(3 << 20))
        noise.append(path)
    files = [source, *noise]
    script = (
        "import logging, resource, sys\n"
        "from stemzip.archive import StemJob, zip_stem\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "files, size = tuple(sys.argv[3:]), int(sys.argv[2])\n"
        "job = StemJob('run1', files, sys.argv[1], size=size)\n"
        "result = zip_stem(job)\n"
        "print(result.status.value, result.error)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )

    done = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            str(tmp_path / "run1.zip"),
            str(sum(path.stat().st_size for path in files)),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )

    outcome, peak = done.stdout.splitlines()
    assert outcome == "zipped None"
    assert "once more" not in done.stderr, "a planned large stem is streamed at once"
    peak_mib = int(peak) / 1024  # ru_maxrss is in KiB on Linux
    assert peak_mib < 150
    with zipfile.ZipFile(tmp_path / "run1.zip") as archive:
        assert archive.getinfo("run1_big.csv").file_size == 2 << 30
        assert archive.getinfo("run1_noise00.csv").compress_size >= 3 << 20
        assert len(archive.infolist()) == 41


def test_verification_rejects_an_archive_that_differs(
    tmp_path: Path, sources: list[Path]
) -> None:
    target = tmp_path / "run1.zip"
    write_archive(target, _named(sources), ArchiveOptions(verify=True))
    expected = {p.name: p.stat().st_size for p in sources}
    verify_archive(target, expected)

    with pytest.raises(ArchiveVerificationError, match=r"missing \['extra.csv'\]"):
        verify_archive(target, {**expected, "extra.csv": 1})

    damaged = bytearray(target.read_bytes())
    offset = damaged.index(b"run1_b.csv") + len("run1_b.csv") + 200
    damaged[offset] ^= 0xFF  # flip a byte of run1_b.csv's compressed data
    target.write_bytes(bytes(damaged))
    with pytest.raises(
        ArchiveVerificationError,
        match=r"run1\.zip.*run1_b\.csv|run1\.zip cannot be read",
    ):
        verify_archive(target, expected)


class _FlippingCompressor:
    """Compresses as zlib does, then damages one byte of what it returns."""

    def __init__(self) -> None:
        self._inner = zlib.compressobj(6, zlib.DEFLATED, -15)
        self._flipped = False

    def compress(self, data: bytes, /) -> bytes:
        return self._damage(self._inner.compress(data))

    def flush(self) -> bytes:
        return self._damage(self._inner.flush())

    def _damage(self, out: bytes) -> bytes:
        if self._flipped or len(out) < 100:
            return out
        self._flipped = True
        return out[:50] + bytes([out[50] ^ 0xFF]) + out[51:]


def test_archive_that_fails_verification_fails_its_stem_and_is_removed(
    tmp_path: Path, sources: list[Path], mocker: MockerFixture
) -> None:
    # memory or a disk that corrupts what it is given cannot be made on
    # demand: the compressor's output is damaged instead, after the CRC of
    # the source was taken, as such a fault would be
    target = tmp_path / "run1.zip"
    earlier_archive(target, {"earlier.txt": "an earlier run"})
    mocker.patch.object(
        ArchiveOptions, "new_compressor", lambda self: _FlippingCompressor()
    )
    job = StemJob(
        "run1",
        tuple(str(p) for p in sources),
        str(target),
        ArchiveOptions(engine="zlib", verify=True),
    )

    result = zip_stem(job)

    assert result.status is Status.FAILED
    assert "ArchiveVerificationError" in str(result.error)
    assert archive_contents(target) == {"earlier.txt": zlib.crc32(b"an earlier run")}
    assert not list(tmp_path.glob(".*.part")), "the bad archive is removed"


@pytest.mark.parametrize("after", ["delete", "move"])
def test_sources_leave_only_after_a_verified_archive(
    tmp_path: Path, sources: list[Path], after: str
) -> None:
    crcs = {p.name: crc_of(p) for p in sources}
    moved = tmp_path / "moved"
    options = ArchiveOptions(verify=True, after=after, move_to=str(moved))
    job = _job_of(sources, tmp_path / "run1.zip", options)

    result = zip_stem(job)

    assert result.status is Status.ZIPPED
    assert archive_contents(tmp_path / "run1.zip") == crcs
    assert not any(p.exists() for p in sources)
    if after == "move":
        assert {p.name: crc_of(p) for p in moved.iterdir()} == crcs
    else:
        assert not moved.exists()


def test_move_never_overwrites(tmp_path: Path, sources: list[Path]) -> None:
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / sources[0].name).write_text("someone else's")
    options = ArchiveOptions(verify=True, after="move", move_to=str(moved))
    job = _job_of(sources, tmp_path / "run1.zip", options)

    result = zip_stem(job)

    assert result.status is Status.FAILED
    assert result.zip_file_path == str(tmp_path / "run1.zip")
    assert result.error is not None and "not all sources were moved" in result.error
    assert all(p.exists() for p in sources)
    assert (moved / sources[0].name).read_text() == "someone else's"


def test_failed_write_leaves_sources_in_place(
    tmp_path: Path, sources: list[Path]
) -> None:
    (tmp_path / "run1.zip").mkdir()  # the archive cannot be renamed into place
    options = ArchiveOptions(verify=True, after="delete")
    job = _job_of(sources, tmp_path / "run1.zip", options)

    result = zip_stem(job)

    assert result.status is Status.FAILED
    assert result.zip_file_path is None
    assert all(p.exists() for p in sources)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param(
            ArchiveOptions(after="shred"), "archive.after 'shred'", id="after"
        ),
        pytest.param(
            ArchiveOptions(after="delete"), "needs archive.verify", id="unverified"
        ),
        pytest.param(
            ArchiveOptions(after="move", verify=True),
            "needs archive.move_to",
            id="no-folder",
        ),
    ],
)
def test_bad_after_options(options: ArchiveOptions, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        options.check()


def test_members_under_relative_paths(tmp_path: Path, sources: list[Path]) -> None:
    job = StemJob(
        stem="run1",
        files=tuple(str(p) for p in sources),
        archive_path=str(tmp_path / "out" / "2026" / "run1.zip"),
        arcnames=tuple(f"Jacket/{p.name}" for p in sources),
    )

    result = zip_stem(job)

    assert result.status is Status.ZIPPED
    assert list(archive_contents(tmp_path / "out" / "2026" / "run1.zip")) == [
        f"Jacket/{p.name}" for p in sources
    ]


def test_partial_files_of_planned_archives_are_removed(tmp_path: Path) -> None:
    names = [
        ".run1.zip.0a1b2c3d.part",  # left by a killed run: goes
        ".run2.zip.0a1b2c3d.part",  # run2 is not being written: stays
        ".run1.zip.backup.part",  # not one of ours: stays
        "run1.zip",
    ]
    for name in names:
        (tmp_path / name).write_text("x")
    job = StemJob(stem="run1", files=(), archive_path=str(tmp_path / "run1.zip"))

    assert remove_partial_files([job]) == 1

    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[1:])


def test_partial_file_of_a_running_writer_is_kept(tmp_path: Path) -> None:
    live = tmp_path / ".run1.zip.0a1b2c3d.part"
    job = StemJob(stem="run1", files=(), archive_path=str(tmp_path / "run1.zip"))
    with live.open("wb") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # as a running writer holds it

        assert remove_partial_files([job]) == 0
        assert live.exists()

    assert remove_partial_files([job]) == 1


def test_stem_near_the_name_limit(tmp_path: Path) -> None:
    stem = "q" * 240  # <stem>.zip fits in 255 bytes; its temporary name would not
    source = tmp_path / f"{stem}_a.csv"
    source.write_text("x")
    job = StemJob(
        stem=stem, files=(str(source),), archive_path=str(tmp_path / f"{stem}.zip")
    )

    result = zip_stem(job)

    assert result.status is Status.ZIPPED, result.error
    assert archive_contents(tmp_path / f"{stem}.zip") == {source.name: crc_of(source)}


def test_in_memory_and_on_disk_assembly_write_the_same_bytes(
    tmp_path: Path, sources: list[Path]
) -> None:
    total = sum(p.stat().st_size for p in sources)

    write_archive(
        tmp_path / "memory.zip", _named(sources), ArchiveOptions(), None, total
    )
    write_archive(
        tmp_path / "disk.zip", _named(sources), ArchiveOptions(), None, 1 << 40
    )

    assert (tmp_path / "memory.zip").read_bytes() == (
        tmp_path / "disk.zip"
    ).read_bytes()


def test_file_grown_past_the_planned_size_is_not_taken_into_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = tmp_path / "run1_a.csv"
    with source.open("wb") as sparse:
        sparse.truncate(64 << 20)  # planned as a few bytes, now 64 MiB
    job = StemJob("run1", (str(source),), str(tmp_path / "run1.zip"), size=10)

    result = zip_stem(job)

    # refused in memory, then read again and streamed to disk
    assert "grew to 67108864 bytes since the run was planned" in caplog.text
    assert result.status is Status.ZIPPED
    assert result.bytes_in == 64 << 20
    assert archive_contents(tmp_path / "run1.zip") == {"run1_a.csv": crc_of(source)}


def test_only_archives_are_replaced(tmp_path: Path, sources: list[Path]) -> None:
    data_file = tmp_path / "run1_forces.csv"
    data_file.write_text("precious results")
    old_archive = tmp_path / "run1.zip"
    write_archive(old_archive, _named(sources[:1]), ArchiveOptions())

    with pytest.raises(NotAnArchiveError, match="is not a ZIP archive"):
        write_archive(data_file, _named(sources), ArchiveOptions())
    write_archive(old_archive, _named(sources), ArchiveOptions())

    assert data_file.read_text() == "precious results"
    assert list(archive_contents(old_archive)) == [p.name for p in sources]


def _workbook(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as book:
        book.writestr("xl/workbook.xml", "<workbook/>")


def _cut_short(path: Path) -> None:
    write_archive(path, [(path.with_suffix(".csv"), "a.csv")], ArchiveOptions())
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])


def _mimic(path: Path) -> None:
    # another tool's archive whose comment is not quite stemzip's
    with zipfile.ZipFile(path, "w") as other:
        other.writestr("notes.txt", "mine")
        other.comment = b"stemzip\0"


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        pytest.param(_workbook, NotAnArchiveError, "did not write", id="workbook"),
        pytest.param(_mimic, NotAnArchiveError, "did not write", id="other-comment"),
        pytest.param(
            _cut_short, DamagedArchiveError, "cannot be read as a ZIP", id="cut-short"
        ),
    ],
)
def test_only_archives_stemzip_wrote_are_replaced(
    tmp_path: Path,
    sources: list[Path],
    make: Callable[[Path], None],
    error: type[Exception],
    message: str,
) -> None:
    target = tmp_path / "run1.zip"
    target.with_suffix(".csv").write_text("a")
    make(target)
    before = target.read_bytes()

    with pytest.raises(error, match=message):
        write_archive(target, _named(sources), ArchiveOptions())
    result = zip_stem(StemJob("run1", tuple(map(str, sources)), str(target)))

    assert result.status is Status.FAILED
    assert target.read_bytes() == before
    assert not list(tmp_path.glob(".*.part"))


def test_a_fifo_at_the_archive_path_is_refused_without_blocking(
    tmp_path: Path, sources: list[Path]
) -> None:
    # made after planning, so only the writer sees it
    target = tmp_path / "run1.zip"
    os.mkfifo(target)

    with pytest.raises(NotAnArchiveError, match="is no regular file"):
        write_archive(target, _named(sources), ArchiveOptions())

    assert stat.S_ISFIFO(os.stat(target).st_mode)
    assert not list(tmp_path.glob(".*.part"))


def _writing_in_a_thread(
    folder: Path, token: str
) -> tuple[threading.Thread, list[BaseException]]:
    """Start archiving minutes of sparse file in a thread, as run ``token``."""
    big = folder / "run1_big.csv"
    with big.open("wb") as sparse:
        sparse.truncate(64 << 30)
    raised: list[BaseException] = []

    def write() -> None:
        with archiving_for(token):
            try:
                write_archive(folder / "run1.zip", [(big, big.name)], ArchiveOptions())
            except BaseException as exc:
                raised.append(exc)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not list(folder.glob(".run1.zip.*.part")):
        assert time.monotonic() < deadline, "the archive was never started"
        time.sleep(0.01)
    return thread, raised


@pytest.mark.parametrize("how", ["every-writer", "this-run"])
def test_interrupted_writer_gives_up_within_a_chunk(tmp_path: Path, how: str) -> None:
    token = f"test-{how}-{os.getpid()}"
    thread, raised = _writing_in_a_thread(tmp_path, token)

    started = time.monotonic()
    if how == "every-writer":  # the threads of an interrupted run
        with stopping_writers():
            thread.join(timeout=10)
    else:  # a Dask worker told that this run was interrupted
        stop_run(f"{token}-another-run")
        thread.join(timeout=0.5)
        assert thread.is_alive(), "another run's stop leaves this run alone"
        stop_run(token)
        thread.join(timeout=10)

    assert not thread.is_alive()
    assert time.monotonic() - started < 5
    assert [type(exc) for exc in raised] == [KeyboardInterrupt]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run1_big.csv"]


def test_verification_gives_up_on_an_interrupt(tmp_path: Path) -> None:
    source = tmp_path / "run1_a.csv"
    source.write_bytes(os.urandom(3 << 20))  # several chunks to read back
    target = tmp_path / "run1.zip"
    write_archive(target, [(source, source.name)], ArchiveOptions())

    with stopping_writers(), pytest.raises(KeyboardInterrupt):
        verify_archive(target, {source.name: 3 << 20})
    verify_archive(target, {source.name: 3 << 20})
