"""The older framework's zip API, ``ZipUtilities``, on top of stemzip.

Configs arrive as plain dicts, as that framework passed them: relative
folders are resolved against ``Analysis.analysis_root_folder``, archives go to
``Analysis.result_folder`` when it is set, and stems come from
``file_management.input_files[<ext>]`` when it is given. Results are written
under ``cfg[cfg["basename"]]``; each stem extension adds its stems to them.

``stemzip-legacy CONFIG.yml`` runs an old-style config file unchanged, with
folders relative to the file.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import signal
import stat
import sys
import zipfile
from collections.abc import MutableMapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from stemzip.archive import ArchiveOptions, StemJob, log_result, zip_stem
from stemzip.config import RunSettings, load_settings
from stemzip.errors import (
    ConfigError,
    RunInterrupted,
    StemzipError,
    UnsafeArchiveError,
)
from stemzip.executors import StemExecutor
from stemzip.results import Status, summarise
from stemzip.task import build_executor, zip_by_stem

log = logging.getLogger(__name__)

Config = MutableMapping[str, Any]

# unzip_files refuses archives that declare more than this
DEFAULT_MAX_UNZIP_BYTES = 16 << 30
DEFAULT_MAX_UNZIP_MEMBERS = 100_000


def _section(cfg: Config, key: str) -> dict[str, Any]:
    value = cfg.get(key) or {}
    if not isinstance(value, MutableMapping):
        raise ConfigError(f"{key} must be a mapping, got {value!r}")
    return dict(value)


def _folder(cfg: Config, key: str) -> str | None:
    folder = _section(cfg, "Analysis").get(key)
    if folder is not None and not isinstance(folder, (str, Path)):
        raise ConfigError(f"Analysis.{key} must be a folder path, got {folder!r}")
    return str(folder) if folder else None


def _root(cfg: Config) -> Path:
    root = _folder(cfg, "analysis_root_folder")
    return Path(root).resolve() if root else Path.cwd()


def _result_folder(cfg: Config) -> str | None:
    return _folder(cfg, "result_folder")


def _explicit_stems(cfg: Config, extension: str) -> list[str] | None:
    given = _section(cfg, "file_management").get("input_files") or {}
    if not isinstance(given, MutableMapping):
        raise ConfigError(
            "file_management.input_files must map each stem extension to a list "
            f"of files, got {given!r}"
        )
    files = given.get(extension)
    if files is None:
        return None
    # the framework passed paths as strings or as Path objects
    if not isinstance(files, list) or not all(
        isinstance(f, (str, Path)) and str(f) for f in files
    ):
        raise ConfigError(
            f"file_management.input_files.{extension} must be a list of files, "
            f"got {files!r}; e.g. [run1.{extension}]"
        )
    return sorted({Path(f).stem for f in files})


def _step_config(cfg: Config, extension: str, stems: Sequence[str] | None) -> Config:
    """The stemzip config for one stem extension, from the framework's keys."""
    step = copy.deepcopy(dict(cfg))
    management = _section(step, "file_management")
    filename = dict(management.get("filename") or {})
    filename["extension"] = [extension]
    management["filename"] = filename
    if _result_folder(cfg):
        management["output_directory"] = _result_folder(cfg)
    if stems is not None and not management.get("input_directory"):
        # the stems are named outright; the stem folder only stands in for
        # the data folder when that is not given either
        management["input_directory"] = str(
            _section(step, "analysis").get("input_directory") or "."
        )
    step["file_management"] = management
    return step


def _merge(cfg: Config, key: str, entries: list[dict[str, Any]]) -> None:
    by_stem = {entry["stem"]: entry for entry in cfg.get(key) or []}
    by_stem.update({entry["stem"]: entry for entry in entries})
    cfg[key] = [by_stem[stem] for stem in sorted(by_stem)]


class ZipUtilities:
    """Zips files by stem, as the older framework's zip module did."""

    def __init__(
        self,
        max_unzip_bytes: int = DEFAULT_MAX_UNZIP_BYTES,
        max_unzip_members: int = DEFAULT_MAX_UNZIP_MEMBERS,
    ) -> None:
        if max_unzip_bytes < 0 or max_unzip_members < 0:
            raise ValueError(
                f"unzip limits must not be negative, got {max_unzip_bytes} bytes "
                f"and {max_unzip_members} members"
            )
        self.max_unzip_bytes = max_unzip_bytes
        self.max_unzip_members = max_unzip_members

    def router(self, cfg: Config) -> Config:
        """Run the step that ``analysis_settings`` asks for; return ``cfg``."""
        settings = _section(cfg, "analysis_settings")
        if (
            settings.get("flag", True) is not True
            or settings.get("by", "stem") != "stem"
        ):
            raise ConfigError(
                "analysis_settings must say flag: true and by: stem for the zip "
                f"step, got {settings!r}"
            )
        return self.zip_files_by_stem(cfg)

    def zip_files_by_stem(self, cfg: Config) -> Config:
        """Zip by stem for every stem extension in ``file_management``."""
        filename = _section(cfg, "file_management").get("filename") or {}
        if not isinstance(filename, MutableMapping):
            raise ConfigError(
                f"file_management.filename must be a mapping, got {filename!r}"
            )
        extensions = filename.get("extension", ["yml"])
        if not isinstance(extensions, list) or not extensions:
            raise ConfigError(
                "file_management.filename.extension must be a list of at least one "
                f"extension, got {extensions!r}"
            )
        # every extension's settings are checked before any is zipped
        steps = [self._plan_step(cfg, extension) for extension in extensions]
        for step in steps:
            self._run_step(cfg, *step)
        return cfg

    def zip_files_by_file_extension(self, cfg: Config, file_extension: str) -> Config:
        """Zip the stems of one stem extension; add them to the results."""
        self._run_step(cfg, *self._plan_step(cfg, file_extension))
        return cfg

    def _plan_step(
        self, cfg: Config, extension: str
    ) -> tuple[str, RunSettings, StemExecutor, list[str] | None]:
        """Check one stem extension's settings; touches no file."""
        if "basename" not in cfg:
            raise ConfigError("the config has no basename; set basename: zip_utilities")
        if not isinstance(extension, str) or not extension:
            raise ConfigError(
                f"file_management.filename.extension holds {extension!r}; "
                "give extensions such as yml"
            )
        stems = _explicit_stems(cfg, extension)
        settings = load_settings(_step_config(cfg, extension, stems), _root(cfg))
        executor = build_executor(cfg.get("parallel_processing"))
        return extension, settings, executor, stems

    def _run_step(
        self,
        cfg: Config,
        file_extension: str,
        settings: RunSettings,
        executor: StemExecutor,
        stems: list[str] | None,
    ) -> None:
        try:
            results = zip_by_stem(settings, executor, stems=stems)
        except RunInterrupted as exc:
            # the stems done so far join those of earlier extensions
            entries = [result.to_dict() for result in exc.results]
            _merge(cfg, str(cfg["basename"]), entries)
            raise

        log.info("%s stems: %s", file_extension, summarise(results).describe())
        _merge(cfg, str(cfg["basename"]), [result.to_dict() for result in results])

    def zip_files(self, cfg: Config, files: Sequence[str], zip_stem_name: str) -> str:
        """Zip ``files`` into ``<result folder>/<zip_stem_name>.zip``; return its path.

        Raises what writing the archive raised.
        """
        folder = _result_folder(cfg) or _section(cfg, "file_management").get(
            "output_directory"
        )
        target = (_root(cfg) / str(folder or ".") / f"{zip_stem_name}.zip").resolve()
        paths = tuple(str((_root(cfg) / str(f)).resolve()) for f in files)
        # members are stored under their file names alone
        seen: dict[str, str] = {}
        for path in paths:
            name = os.path.basename(path)
            if name in seen:
                raise StemzipError(
                    f"zipping {zip_stem_name!r}: {seen[name]} and {path} would both "
                    f"be stored as {name!r}; pass files with different names"
                )
            seen[name] = path
        job = StemJob(
            stem=zip_stem_name,
            files=paths,
            archive_path=str(target),
            options=ArchiveOptions(),
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        result = zip_stem(job)
        log_result(result)
        if result.status is Status.FAILED:
            raise StemzipError(f"zipping {zip_stem_name!r} failed: {result.error}")
        return str(target)

    def unzip_files(self, zip_name: str | Path, destination: str | Path) -> list[str]:
        """Extract ``zip_name`` into ``destination``; return the files written.

        Nothing is written outside ``destination``: an archive with an
        absolute member name, a ``..`` part, a link member, or more members or
        declared bytes than the limits is refused before anything is written,
        with :class:`~stemzip.errors.UnsafeArchiveError`.
        """
        folder = Path(destination).resolve()
        with zipfile.ZipFile(zip_name) as archive:
            members = archive.infolist()
            self._check_limits(zip_name, members)
            targets = [_safe_target(folder, info, zip_name) for info in members]
            _check_layout(zip_name, members, targets)
            folder.mkdir(parents=True, exist_ok=True)
            written = []
            for info, target in zip(members, targets, strict=True):
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                _extract(archive, info, target)
                written.append(str(target))
        return written

    def _check_limits(
        self, zip_name: str | Path, members: list[zipfile.ZipInfo]
    ) -> None:
        declared = sum(info.file_size for info in members)
        if len(members) > self.max_unzip_members:
            raise UnsafeArchiveError(
                f"{zip_name}: {len(members)} members is over the limit of "
                f"{self.max_unzip_members}; raise max_unzip_members to extract it"
            )
        if declared > self.max_unzip_bytes:
            raise UnsafeArchiveError(
                f"{zip_name}: {declared} bytes declared is over the limit of "
                f"{self.max_unzip_bytes}; raise max_unzip_bytes to extract it"
            )


def _extract(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> None:
    # through a temporary name, so a member that fails its CRC leaves nothing
    partial = target.with_name(f".{target.name}.unzip.part")
    try:
        with archive.open(info) as source, partial.open("wb") as sink:
            while chunk := source.read(1 << 20):
                sink.write(chunk)
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _check_layout(
    zip_name: str | Path, members: list[zipfile.ZipInfo], targets: list[Path]
) -> None:
    files = [t for info, t in zip(members, targets, strict=True) if not info.is_dir()]
    if len(set(files)) != len(files):
        raise UnsafeArchiveError(f"{zip_name}: two members have the same name")
    folders = {parent for target in targets for parent in target.parents}
    clash = sorted(str(t) for t in files if t in folders)
    if clash:
        raise UnsafeArchiveError(
            f"{zip_name}: {clash[0]} is both a file and a folder in the archive"
        )


def _safe_target(folder: Path, info: zipfile.ZipInfo, zip_name: str | Path) -> Path:
    name = info.filename.replace("\\", "/")
    parts = [part for part in PurePosixPath(name).parts if part != "."]
    if not parts:
        raise UnsafeArchiveError(f"{zip_name}: a member has an empty name")
    if name.startswith("/") or (parts and ":" in parts[0]) or ".." in parts:
        raise UnsafeArchiveError(
            f"{zip_name}: member {info.filename!r} leaves the folder"
        )
    if stat.S_ISLNK(info.external_attr >> 16):
        raise UnsafeArchiveError(f"{zip_name}: member {info.filename!r} is a link")
    target = (folder / name).resolve()
    # a link already in the destination could still lead outside it
    if not target.is_relative_to(folder):
        raise UnsafeArchiveError(
            f"{zip_name}: member {info.filename!r} would be written at {target}, "
            f"outside {folder}"
        )
    return target


def load_legacy_config(path: Path) -> dict[str, Any]:
    """Read an old-style config file, with folders made relative to it."""
    try:
        node = OmegaConf.load(path)
    except OSError:
        raise
    except Exception as exc:  # the YAML parser's own errors
        raise ConfigError(f"{path} cannot be read as YAML: {exc}") from exc
    try:
        loaded = OmegaConf.to_container(node, resolve=True)
    except OmegaConfBaseException as exc:
        reason = str(exc).splitlines()[0]
        raise ConfigError(f"{path}: a value cannot be resolved: {reason}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} does not hold a mapping of settings")
    cfg: dict[str, Any] = {str(key): value for key, value in loaded.items()}
    if "basename" not in cfg:
        meta = _section(cfg, "meta")
        cfg["basename"] = meta.get("basename", "zip_utilities")
    if not isinstance(cfg["basename"], str) or not cfg["basename"]:
        raise ConfigError(
            f"{path}: basename must be a non-empty string, got {cfg['basename']!r}"
        )
    analysis = _section(cfg, "Analysis")
    analysis.setdefault("analysis_root_folder", str(path.resolve().parent))
    cfg["Analysis"] = analysis
    return cfg


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point of ``stemzip-legacy``."""
    parser = argparse.ArgumentParser(
        prog="stemzip-legacy",
        description="Run an old-style zip_utilities config file with stemzip.",
    )
    parser.add_argument("config", type=Path, help="the old-style YAML file")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s",
    )

    # a scheduler's SIGTERM stops the run as Ctrl-C does, in order
    signal.signal(signal.SIGTERM, _interrupt)
    cfg: Config = {}
    try:
        cfg = load_legacy_config(args.config)
        ZipUtilities().router(cfg)
    except (StemzipError, OSError) as exc:
        log.error("%s", exc)
        sys.exit(2)
    except KeyboardInterrupt:
        if "basename" in cfg:
            # the stems done so far, of every stem extension reached
            done = cfg.get(cfg["basename"]) or []
            print(OmegaConf.to_yaml({cfg["basename"]: done}), end="")
        print("stemzip-legacy: interrupted", file=sys.stderr)
        sys.exit(130)

    results = cfg[cfg["basename"]]
    print(OmegaConf.to_yaml({cfg["basename"]: results}), end="")
    sys.exit(1 if any(entry["status"] == "failed" for entry in results) else 0)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
