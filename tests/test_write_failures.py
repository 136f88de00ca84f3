"""Output that cannot be written: a folder refused up front, a disk that fills."""

from __future__ import annotations

import errno
import io
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from pytest_mock import MockerFixture

from stemzip import archive as archive_module
from stemzip.config import RunSettings
from stemzip.executors import SequentialStemExecutor
from stemzip.results import Status
from stemzip.task import zip_by_stem

from .conftest import archive_contents, crc_of, unprivileged, write_run_tree
from .test_app import STEMZIP


def _stemzip(
    prefix: list[str], folder: Path, output: str = "out"
) -> subprocess.CompletedProcess[str]:
    """Run the command under ``prefix`` on the run tree in ``folder``."""
    return subprocess.run(
        [
            *prefix,
            str(STEMZIP),
            "file_management.input_directory=stems",
            "analysis.input_directory=data",
            f"file_management.output_directory={output}",
            "parallel_processing=sequential",
            "hydra.run.dir=job",
        ],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _read_only_mount(out: Path) -> list[str]:
    """A command prefix that mounts ``out`` read-only for the command alone."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no unshare command to make a private mount namespace")
    # in a private mount namespace the mount ends with the command, and no
    # other process sees it
    mount = 'mount --bind -o ro "$0" "$0" && exec "$@"'
    prefix = [unshare, "--mount", "sh", "-c", mount, str(out)]
    tried = subprocess.run([*prefix, "true"], capture_output=True, text=True)
    if tried.returncode != 0:
        pytest.skip(f"cannot mount a folder read-only here: {tried.stderr.strip()}")
    return prefix


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        pytest.param("no-permission", "Permission denied", id="no-permission"),
        pytest.param("no-access", "Permission denied", id="no-access"),
        pytest.param("no-listing", "Permission denied", id="write-only"),
        pytest.param("read-only", "Read-only file system", id="read-only-mount"),
    ],
)
def test_unwritable_output_folder_stops_the_run_before_any_work(
    tmp_path: Path, fault: str, reason: str
) -> None:
    write_run_tree(tmp_path, ["run1", "run2"], {"run1_a.csv": "1", "run2_a.csv": "2"})
    out = tmp_path / "out"
    out.mkdir()
    if fault.startswith("no-"):
        # no-access: not even a look inside, which planning takes first
        out.chmod({"no-permission": 0o555, "no-access": 0, "no-listing": 0o300}[fault])
        prefix = unprivileged()
    else:
        prefix = _read_only_mount(out)

    done = _stemzip(prefix, tmp_path)

    assert done.returncode == 2, done.stderr
    assert (
        f"file_management.output_directory: cannot write in {out} ({reason}); "
        "make it writable or set file_management.output_directory="
    ) in done.stderr
    assert "wrote " not in done.stderr
    assert list(out.iterdir()) == []
    assert not (tmp_path / "job" / "results.yaml").exists()


class _Disk(io.FileIO):
    """A file on a disk with room for ``room`` more bytes.

    As write(2) does, a write past the room stores what fits and says so only
    in its count; the next one fails with ENOSPC.
    """

    room = 0

    def write(self, data: Any) -> int:
        if not self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        part = memoryview(data).cast("B")[: self.room]
        self.room -= len(part)
        return super().write(part)


class _FullDisk(archive_module._ArchiveFile, _Disk):
    """stemzip's archive file, on a disk that fills as it is written."""


def test_full_disk_fails_the_stems_it_hits_and_leaves_nothing_behind(
    run_tree: Callable[..., RunSettings], mocker: MockerFixture
) -> None:
    # a disk cannot be filled safely on a shared machine, so the archive
    # files of run1 and run2 get a disk that fills as they are written;
    # run1 is small (assembled in memory, written at once) and run2 large
    # (streamed, fails after its first MiB is on disk)
    settings = run_tree(
        ["run1", "run2", "run3"],
        {
            "run1_a.csv": "1,2\n" * 1000,
            "run2_a.csv": os.urandom(6 << 20),
            "run3_a.csv": "3,4\n" * 1000,
        },
    )
    real_create = archive_module._create
    rooms = {"run1": 100, "run2": 1 << 20}
    filled: list[str] = []

    def create(path: Path) -> io.FileIO:
        stem = path.name.split(".")[1]
        if stem not in rooms:
            return real_create(path)
        handle = _FullDisk(path, "xb")
        handle.room = rooms[stem]
        filled.append(stem)
        return handle

    mocker.patch.object(archive_module, "_create", side_effect=create)

    results = {r.stem: r for r in zip_by_stem(settings, SequentialStemExecutor())}

    assert sorted(set(filled)) == ["run1", "run2"]
    for stem in ("run1", "run2"):
        assert results[stem].status is Status.FAILED
        assert "No space left on device" in str(results[stem].error)
        assert results[stem].zip_file_path is None
    assert results["run3"].status is Status.ZIPPED
    out = settings.output_directory
    assert sorted(p.name for p in out.iterdir()) == ["run3.zip"]
    data = settings.data_directory
    assert archive_contents(out / "run3.zip") == {
        "run3_a.csv": crc_of(data / "run3_a.csv")
    }


def _tiny_disk(out: Path, kept: Path) -> list[str]:
    """A command prefix that runs the command on a 1 MiB file system at ``out``.

    The file system is mounted in a private mount namespace, so it ends with
    the command and no other process sees it; what the command left on it is
    copied to ``kept`` first.
    """
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no unshare command to make a private mount namespace")
    script = (
        'kept="$1"; shift; mount -t tmpfs -o size=1m stemzip-test "$0" || exit 99; '
        '"$@"; status=$?; cp -a "$0/." "$kept"; exit $status'
    )
    prefix = [unshare, "--mount", "sh", "-c", script, str(out), str(kept)]
    tried = subprocess.run([*prefix, "true"], capture_output=True, text=True)
    if tried.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {tried.stderr.strip()}")
    return prefix


def test_a_disk_that_really_fills_fails_the_stems_it_hits(tmp_path: Path) -> None:
    # run2 is streamed (over 4 MiB) and fails part way; run4 is assembled in
    # memory and fails on its one write; run1 and run3 fit
    write_run_tree(
        tmp_path,
        ["run1", "run2", "run3", "run4"],
        {
            "run1_a.csv": "1,2\n" * 1000,
            "run2_a.csv": os.urandom(6 << 20),
            "run3_a.csv": "3,4\n" * 1000,
            "run4_a.csv": os.urandom(2 << 20),
        },
    )
    out, kept = tmp_path / "out", tmp_path / "kept"
    out.mkdir()
    kept.mkdir()
    prefix = _tiny_disk(out, kept)

    done = _stemzip(prefix, tmp_path)

    assert done.returncode == 1, done.stderr
    saved = yaml.safe_load((tmp_path / "job" / "results.yaml").read_text())
    by_stem = {entry["stem"]: entry for entry in saved["zip_utilities"]}
    for stem in ("run2", "run4"):
        assert by_stem[stem]["status"] == "failed"
        assert "[Errno 28] No space left on device" in by_stem[stem]["error"]
        assert by_stem[stem]["zip_file_path"] is None
    assert sorted(p.name for p in kept.iterdir()) == ["run1.zip", "run3.zip"]
    for stem in ("run1", "run3"):
        assert by_stem[stem]["status"] == "zipped"
        source = tmp_path / "data" / f"{stem}_a.csv"
        assert archive_contents(kept / f"{stem}.zip") == {source.name: crc_of(source)}


def test_an_output_folder_that_cannot_be_looked_for_stops_the_run(
    tmp_path: Path,
) -> None:
    write_run_tree(tmp_path, ["run1"], {"run1_a.csv": "1"})
    closed = tmp_path / "closed"
    (closed / "out").mkdir(parents=True)
    closed.chmod(0)
    try:
        done = _stemzip(unprivileged(), tmp_path, output="closed/out")
    finally:
        closed.chmod(0o755)

    assert done.returncode == 2, done.stderr
    assert (
        f"file_management.output_directory: cannot look for {closed / 'out'} "
        "(Permission denied)"
    ) in done.stderr
    assert "Traceback" not in done.stderr
    assert list((closed / "out").iterdir()) == []
