"""The progress bar, drawn through a real pseudo-terminal."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import write_run_tree

STEMZIP = Path(sys.executable).with_name("stemzip")


def _tree(root: Path) -> list[str]:
    data = {f"run{i}_{c}.csv": "t,x\n1,2\n" * 500 for i in range(6) for c in "ab"}
    write_run_tree(root, [f"run{i}" for i in range(6)], data)
    return [
        f"file_management.input_directory={root / 'stems'}",
        f"analysis.input_directory={root / 'data'}",
        f"file_management.output_directory={root / 'out'}",
        f"hydra.run.dir={root / 'job'}",
        "parallel_processing.progress_reporting=true",
    ]


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO once the child has closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("executor", ["sequential", "parallel", "threads", "dask"])
def test_bar_on_a_terminal(tmp_path: Path, executor: str) -> None:
    main, secondary = pty.openpty()
    with subprocess.Popen(
        [str(STEMZIP), *_tree(tmp_path), f"parallel_processing={executor}"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=secondary,
    ) as process:
        os.close(secondary)
        screen = _read_all(main).decode(errors="replace")
        process.wait(timeout=120)
    os.close(main)

    assert process.returncode == 0, screen
    assert "6/6" in screen
    assert "stem/s" in screen or "s/stem" in screen
    assert "MB/s" in screen
    assert "done in" in screen, "log lines still reach the terminal"


def test_no_bar_without_a_terminal(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(STEMZIP), *_tree(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert "6/6" not in done.stderr
    assert "stem/s" not in done.stderr
