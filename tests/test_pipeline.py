"""stemzip inside another Hydra app: the example pipeline, run for real."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from .conftest import archive_contents

PIPELINE = Path(__file__).resolve().parent.parent / "examples" / "pipeline"


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param([], id="defaults"),
        pytest.param(
            ["parallel_processing@zip_step.parallel_processing=parallel"],
            id="parallel-step",
        ),
        pytest.param(["hydra.job.chdir=true"], id="job-in-its-own-folder"),
    ],
)
def test_simulate_then_zip(tmp_path: Path, overrides: list[str]) -> None:
    shutil.copytree(PIPELINE, tmp_path / "pipeline")

    done = subprocess.run(
        [sys.executable, "pipeline/pipeline.py", "hydra.run.dir=job", *overrides],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    zipped = tmp_path / "campaign" / "zipped"
    assert sorted(p.name for p in zipped.iterdir()) == [
        "LC_000deg.zip",
        "LC_045deg.zip",
        "LC_090deg.zip",
    ]
    assert list(archive_contents(zipped / "LC_045deg.zip")) == [
        "LC_045deg_Jacket1.csv",
        "LC_045deg_Strut1.csv",
    ]
    log = (tmp_path / "job" / "pipeline.log").read_text()
    assert "simulated 3 load cases" in log
    assert "3 zipped, 0 skipped, 0 no_files, 0 failed" in log


def test_host_config_composes_stemzip_under_its_own_node() -> None:
    with initialize_config_dir(str(PIPELINE / "conf"), version_base="1.3"):
        cfg = compose(
            "pipeline",
            overrides=["parallel_processing@zip_step.parallel_processing=threads"],
        )

    assert cfg.zip_step.basename == "zip_utilities"
    assert cfg.zip_step.archive.compression == "deflated"
    assert cfg.zip_step.parallel_processing._target_.endswith("ThreadPoolStemExecutor")
    assert cfg.zip_step.file_management.output_directory == "campaign/zipped"
    assert "parallel_processing" not in cfg
