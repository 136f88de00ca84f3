"""The built wheel: it carries its own config and registers the task."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import yaml

import stemzip.task
from stemzip import __version__

from .conftest import write_run_tree

REPOSITORY = Path(__file__).resolve().parent.parent


def test_task_entry_point_is_registered() -> None:
    (found,) = entry_points(group="stemzip.tasks", name="zip_utilities")

    assert found.load() is stemzip.task.run


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The wheel built from this checkout, unpacked into a folder of its own."""
    root = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "-w", str(root / "dist"), str(REPOSITORY)],
        check=True,
        timeout=300,
    )
    (wheel,) = (root / "dist").glob(f"stemzip-{__version__}-*.whl")
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(root / "site"), str(wheel)],
        check=True,
        timeout=300,
    )
    yield root / "site"


def _run_from_wheel(
    site: Path, cwd: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run(
        [sys.executable, "-m", "stemzip", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_wheel_runs_anywhere_on_its_own_defaults(
    wheel_site: Path, tmp_path: Path
) -> None:
    write_run_tree(tmp_path, ["a"], {"a_1.csv": "1"})

    done = _run_from_wheel(
        wheel_site,
        tmp_path,
        "file_management.input_directory=stems",
        "analysis.input_directory=data",
        "hydra.run.dir=job",
    )

    assert done.returncode == 0, done.stderr
    assert f"{wheel_site}" in _imported_from(wheel_site)
    assert (tmp_path / "data" / "a.zip").is_file(), "output defaults to the data folder"
    assert (tmp_path / "job" / "stemzip.log").is_file()


def test_wheel_uses_the_project_config_in_the_start_folder(
    wheel_site: Path, tmp_path: Path
) -> None:
    shutil.copytree(REPOSITORY / "conf", tmp_path / "conf")
    shutil.copytree(REPOSITORY / "examples" / "runs", tmp_path / "examples" / "runs")

    done = _run_from_wheel(wheel_site, tmp_path, "hydra.run.dir=job")

    assert done.returncode == 0, done.stderr
    results = yaml.safe_load((tmp_path / "job" / "results.yaml").read_text())
    assert len(results["zip_utilities"]) == 5
    assert len(list((tmp_path / "examples" / "zipped").glob("*.zip"))) == 4


def _imported_from(site: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run(
        [sys.executable, "-c", "import stemzip; print(stemzip.__file__)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_hydra_discovers_the_plugin_from_the_wheel(wheel_site: Path) -> None:
    script = (
        "from hydra.core.plugins import Plugins\n"
        "from hydra.plugins.search_path_plugin import SearchPathPlugin\n"
        "import hydra_plugins.stemzip_plugin as plugin\n"
        "found = Plugins.instance().discover(SearchPathPlugin)\n"
        "print(plugin.__file__)\n"
        "print(' '.join(p.__name__ for p in found))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(wheel_site)}

    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )

    where, names = done.stdout.splitlines()
    assert where.startswith(str(wheel_site))
    assert "StemzipSearchPathPlugin" in names.split()
