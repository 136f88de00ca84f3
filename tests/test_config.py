from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf

from stemzip.config import load_settings
from stemzip.errors import ConfigError, InputDirectoryError, OutputDirectoryError


@pytest.fixture
def composed() -> Iterator[Any]:
    with initialize_config_module(config_module="stemzip.conf", version_base="1.3"):

        def make(*overrides: str) -> DictConfig:
            return compose(config_name="config", overrides=list(overrides))

        yield make


def test_package_defaults(composed: Any) -> None:
    cfg = composed()

    assert cfg.basename == "zip_utilities"
    assert OmegaConf.is_missing(cfg.file_management, "input_directory")
    assert cfg.file_management.output_directory is None
    assert cfg.file_management.filename.extension == ["yml"]
    assert cfg.analysis.filename.extension == ["csv"]
    assert cfg.default.config.overwrite.output is True
    assert cfg.archive.compression == "deflated"
    assert cfg.parallel_processing._target_.endswith("ProcessPoolStemExecutor")
    assert cfg.parallel_processing.max_workers == "auto"


@pytest.mark.parametrize(
    ("overrides", "key", "expected"),
    [
        pytest.param(
            ["parallel_processing=sequential"],
            "parallel_processing._target_",
            "stemzip.executors.SequentialStemExecutor",
            id="sequential",
        ),
        pytest.param(
            ["parallel_processing.max_workers=4"],
            "parallel_processing.max_workers",
            4,
            id="workers",
        ),
        pytest.param(
            ["file_management.filename.extension=[yml,yaml]"],
            "file_management.filename.extension",
            ["yml", "yaml"],
            id="extensions",
        ),
        pytest.param(["basename=zips"], "basename", "zips", id="basename"),
        pytest.param(
            ["archive.compression=stored"], "archive.compression", "stored", id="stored"
        ),
    ],
)
def test_overrides(
    composed: Any, overrides: list[str], key: str, expected: Any
) -> None:
    assert OmegaConf.select(composed(*overrides), key) == expected


@pytest.mark.parametrize(
    ("override", "message"),
    [
        pytest.param("parallel_processing=gpu", "parallel_processing", id="group"),
        pytest.param(
            "parallel_processing.timeout_per_file=soon",
            "timeout_per_file",
            id="timeout",
        ),
        pytest.param("default.config.overwrite.output=sometimes", "output", id="bool"),
        pytest.param("archive.nonsense=1", "nonsense", id="unknown-key"),
    ],
)
def test_schema_refuses_bad_types(composed: Any, override: str, message: str) -> None:
    with pytest.raises(ConfigCompositionException, match=message):
        composed(override)


def _tree(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "runs" / "out").mkdir(parents=True)
    return {"file_management": {"input_directory": "runs"}}


def test_relative_folders_resolve_against_base_and_default_sensibly(
    tmp_path: Path,
) -> None:
    settings = load_settings(_tree(tmp_path), tmp_path)

    assert settings.stem_directory == tmp_path / "runs"
    assert settings.data_directory == tmp_path / "runs"
    assert settings.output_directory == tmp_path / "runs"
    assert settings.stem_extensions == ("yml",)
    assert settings.data_extensions == ("csv",)
    assert settings.if_exists == "overwrite"


def test_a_folder_may_start_at_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tree(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = {"file_management": {"input_directory": "~/runs", "output_directory": "~"}}

    settings = load_settings(cfg, tmp_path / "elsewhere")

    assert settings.stem_directory == tmp_path / "runs"
    assert settings.output_directory == tmp_path


def test_all_keys_read(tmp_path: Path) -> None:
    cfg = _tree(tmp_path)
    cfg["file_management"] |= {
        "output_directory": "zips",
        "filename": {"extension": [".yaml"], "filters": {"contains": ["LWL"]}},
    }
    cfg["analysis"] = {
        "input_directory": "runs/out",
        "filename": {"extension": ["txt"]},
    }
    cfg["default"] = {"config": {"overwrite": {"output": False}}}
    cfg["archive"] = {
        "compression": "bzip2",
        "compresslevel": 3,
        "verify": True,
        "fsync": True,
    }

    settings = load_settings(cfg, tmp_path)

    assert settings.data_directory == tmp_path / "runs" / "out"
    assert settings.output_directory == tmp_path / "zips"
    assert settings.stem_extensions == ("yaml",)
    assert settings.data_extensions == ("txt",)
    assert settings.stem_filter.contains == ("LWL",)
    assert settings.if_exists == "skip"
    assert settings.archive.compression == "bzip2"
    assert settings.archive.level() == 3
    assert settings.archive.verify is True
    assert settings.archive.fsync is True


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        pytest.param(
            {"file_management": {}},
            InputDirectoryError,
            r"file_management.input_directory is not set; .*input_directory=",
            id="stem-folder-unset",
        ),
        pytest.param(
            {"file_management": {"input_directory": "nowhere"}},
            InputDirectoryError,
            r"file_management.input_directory 'nowhere' does not exist \(resolved to "
            r".*nowhere\); set file_management.input_directory=",
            id="stem-folder-missing",
        ),
        pytest.param(
            {"analysis": {"input_directory": "runs/missing"}},
            InputDirectoryError,
            r"analysis.input_directory 'runs/missing' does not exist",
            id="data-folder-missing",
        ),
        pytest.param(
            {"analysis": {"input_directory": "runs/a.yml"}},
            InputDirectoryError,
            r"analysis.input_directory 'runs/a.yml' is not a folder",
            id="data-folder-is-file",
        ),
        pytest.param(
            {
                "file_management": {
                    "input_directory": "runs",
                    "output_directory": "runs/a.yml",
                }
            },
            OutputDirectoryError,
            r"output_directory 'runs/a.yml' is a file",
            id="output-is-file",
        ),
        pytest.param(
            {
                "file_management": {
                    "input_directory": "runs",
                    "output_directory": "runs/a.yml/zips",
                }
            },
            OutputDirectoryError,
            r"output_directory 'runs/a.yml/zips' cannot be made: .*a.yml is a file",
            id="output-under-a-file",
        ),
        pytest.param(
            {"analysis": {"filename": {"extension": "csv"}}},
            ConfigError,
            r"analysis.filename.extension must be a list of strings, got 'csv'",
            id="extension-string",
        ),
        pytest.param(
            {"analysis": {"filename": {"extension": []}}},
            ConfigError,
            r"must name at least one extension",
            id="extension-empty",
        ),
        pytest.param(
            {"default": {"config": {"overwrite": {"output": "yes"}}}},
            ConfigError,
            r"overwrite.output must be true or false, got 'yes'",
            id="overwrite",
        ),
        pytest.param(
            {"archive": {"compression": "zstd"}},
            ConfigError,
            r"archive.compression 'zstd' is not one of stored, deflated, bzip2, lzma",
            id="compression",
        ),
        pytest.param(
            {"archive": {"compresslevel": "high"}},
            ConfigError,
            r"archive.compresslevel must be a whole number, got 'high'",
            id="level-type",
        ),
        pytest.param({"basename": ""}, ConfigError, "basename must be", id="basename"),
        pytest.param(
            {"analysis": {"filename": {"filters": "LWL"}}},
            ConfigError,
            r"analysis.filename.filters must be a group of settings, got 'LWL'",
            id="filters-string",
        ),
        pytest.param(
            {"default": {"config": 3}},
            ConfigError,
            r"default.config must be a group of settings, got 3",
            id="legacy-group-number",
        ),
        pytest.param(
            {"analysis": {"filename": {"extension": {"csv": 1}}}},
            ConfigError,
            r"extension must be a list of strings, got \{'csv': 1\}; e.g. ",
            id="extension-mapping",
        ),
        pytest.param(
            {"analysis": {"input_directory": ""}},
            ConfigError,
            r"analysis.input_directory is empty \(''\); give a folder",
            id="data-folder-empty",
        ),
    ],
)
def test_bad_values_name_the_key(
    tmp_path: Path, changes: dict[str, Any], error: type[Exception], message: str
) -> None:
    cfg = _tree(tmp_path)
    (tmp_path / "runs" / "a.yml").write_text("x")
    cfg = OmegaConf.to_container(OmegaConf.merge(cfg, changes))
    if changes.get("file_management") == {}:
        cfg["file_management"] = {}

    with pytest.raises(error, match=message):
        load_settings(cfg, tmp_path)


def test_nothing_is_created_while_checking(tmp_path: Path) -> None:
    cfg = _tree(tmp_path)
    cfg["file_management"]["output_directory"] = "new/zips"

    load_settings(cfg, tmp_path)

    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    ("archive", "message"),
    [
        pytest.param({"name": "all.zip"}, "must contain {stem}", id="no-stem"),
        pytest.param({"name": "{stem}_{user}.zip"}, "may use only", id="unknown-field"),
        pytest.param(
            {"name": "../{stem}.zip"}, "inside the output folder", id="escape"
        ),
        pytest.param(
            {"name": "/tmp/{stem}.zip"}, "inside the output folder", id="absolute"
        ),
        pytest.param({"name": "{stem"}, "not a valid template", id="broken"),
        pytest.param({"name": "{stem:.3}.zip"}, "no format spec", id="spec"),
        pytest.param({"name": "{stem!r}.zip"}, "no format spec", id="conversion"),
        pytest.param({"name": "{date:%Y}{stem}.zip"}, "no format spec", id="date-spec"),
        pytest.param(
            {"name": "old/.{stem}.0badcafe.part"},
            "the way stemzip names its temporary files",
            id="like-a-temporary-file",
        ),
        pytest.param(
            {"after": "move"}, "archive.move_to is not set", id="move-nowhere"
        ),
        pytest.param(
            {"after": "shred"}, "archive.after 'shred' is not one of", id="after"
        ),
        pytest.param(
            {"compresion": "stored"}, "archive has no key 'compresion'", id="typo"
        ),
        pytest.param({"compresslevel": 7}, "archive.engine=zlib", id="isal-level-hint"),
    ],
)
def test_bad_archive_settings(
    tmp_path: Path, archive: dict[str, Any], message: str
) -> None:
    cfg = _tree(tmp_path) | {"archive": archive}

    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(cfg, tmp_path)


def test_after_delete_or_move_turns_verification_on(tmp_path: Path) -> None:
    cfg = _tree(tmp_path) | {"archive": {"after": "move", "move_to": "done"}}

    options = load_settings(cfg, tmp_path).archive

    assert options.verify is True
    assert options.move_to == str(tmp_path / "done")


def test_data_selection_keys(tmp_path: Path) -> None:
    cfg = _tree(tmp_path) | {
        "dry_run": True,
        "analysis": {
            "recursive": True,
            "filename": {"filters": {"include": ["*.csv"], "not_contains": ["tmp"]}},
        },
    }

    settings = load_settings(cfg, tmp_path)

    assert settings.dry_run is True
    assert settings.recursive is True
    assert settings.data_filter.include == ("*.csv",)
    assert settings.data_filter.not_contains == ("tmp",)


def test_folder_behind_a_link_loop(tmp_path: Path) -> None:
    (tmp_path / "loop").symlink_to(tmp_path / "loop")

    with pytest.raises(InputDirectoryError, match="'loop' cannot be resolved"):
        load_settings({"file_management": {"input_directory": "loop"}}, tmp_path)
