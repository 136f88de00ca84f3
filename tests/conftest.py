from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from stemzip.archive import ArchiveOptions, write_archive
from stemzip.config import RunSettings


def write_run_tree(
    root: Path, stems: Iterable[str], data: dict[str, str | bytes]
) -> tuple[Path, Path]:
    """Write stem files and data files under ``root``; return both folders."""
    stem_dir = root / "stems"
    data_dir = root / "data"
    stem_dir.mkdir(parents=True, exist_ok=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    for stem in stems:
        (stem_dir / f"{stem}.yml").write_text(f"name: {stem}\n")
    for name, content in data.items():
        path = data_dir / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return stem_dir, data_dir


def unprivileged() -> list[str]:
    """A command prefix under which file permissions apply, or skip the test.

    Root reads everything; without the two capabilities that let it, the
    permission bits hold for it as for anyone.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("no setpriv to drop root's file capabilities")
    caps = "-dac_override,-dac_read_search"
    prefix = [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}", "--"]
    if subprocess.run([*prefix, "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot drop root's file capabilities here")
    return prefix


def earlier_archive(path: Path, members: dict[str, str]) -> None:
    """Write ``path`` as an earlier run of stemzip would have, with ``members``.

    Their sources are written to a scratch folder and removed, so they count
    as gone from any data folder.
    """
    with tempfile.TemporaryDirectory() as folder:
        sources = []
        for name, text in members.items():
            source = Path(folder) / name
            source.parent.mkdir(parents=True, exist_ok=True)
            source.write_text(text)
            sources.append((source, name))
        path.parent.mkdir(parents=True, exist_ok=True)
        write_archive(path, sources, ArchiveOptions())


def archive_contents(path: Path) -> dict[str, int]:
    """Member name to CRC, after checking every member reads back."""
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        return {info.filename: info.CRC for info in archive.infolist()}


def crc_of(path: Path) -> int:
    return zlib.crc32(path.read_bytes())


@pytest.fixture
def run_tree(tmp_path: Path) -> Callable[..., RunSettings]:
    """Build a run tree and return settings that point at it."""

    def build(
        stems: Iterable[str], data: dict[str, str | bytes], **changes: object
    ) -> RunSettings:
        stem_dir, data_dir = write_run_tree(tmp_path, stems, data)
        values: dict[str, object] = {
            "basename": "zip_utilities",
            "stem_directory": stem_dir,
            "data_directory": data_dir,
            "output_directory": tmp_path / "out",
            "stem_extensions": ("yml",),
            "data_extensions": ("csv",),
        }
        values.update(changes)
        return RunSettings(**values)  # type: ignore[arg-type]

    return build


def _wait_for(condition: Callable[[], bool], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        time.sleep(0.1)


@pytest.fixture(scope="session")
def dask_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Dask scheduler with two worker processes, on loopback."""
    from distributed import Client

    folder = tmp_path_factory.mktemp("dask")
    scheduler_file = folder / "scheduler.json"
    dask = str(Path(sys.executable).with_name("dask"))
    local = ["--host", "127.0.0.1", "--scheduler-file", str(scheduler_file)]
    with (folder / "cluster.log").open("w") as log:
        processes = [
            subprocess.Popen(
                [dask, "scheduler", "--port", "0", "--dashboard-address", ":0", *local],
                stdout=log,
                stderr=log,
            )
        ]
        try:
            _wait_for(scheduler_file.exists, "the Dask scheduler")
            processes.append(
                subprocess.Popen(
                    [dask, "worker", "--nworkers", "2", "--nthreads", "1", *local],
                    stdout=log,
                    stderr=log,
                )
            )
            address = json.loads(scheduler_file.read_text())["address"]
            with Client(address, timeout=60) as client:
                client.wait_for_workers(2, timeout=60)
            yield address
        finally:
            for process in reversed(processes):
                process.terminate()
                process.wait(timeout=30)


def assert_plain_data(value: object) -> None:
    """``value`` holds only dicts, lists, strings, numbers, booleans and None.

    Exact types: a ``str`` subclass such as an enum member is not plain.
    """
    if isinstance(value, dict):
        for key, item in value.items():
            assert type(key) is str, key
            assert_plain_data(item)
    elif isinstance(value, list):
        for item in value:
            assert_plain_data(item)
    else:
        assert type(value) in (str, int, float, bool, type(None)), repr(value)
