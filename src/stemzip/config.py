"""Configuration schema, and its conversion into plain run settings.

The dataclasses below are registered in Hydra's ConfigStore: ``stemzip_base``
holds every key with its default and type, and the ``parallel_processing``
group holds one node per executor. :func:`load_settings` turns a composed
config into :class:`RunSettings`, checking every value before any file is
touched.
"""

from __future__ import annotations

import logging
import os
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from stemzip.archive import AFTER_ACTIONS, ArchiveOptions, is_temporary
from stemzip.errors import ConfigError, InputDirectoryError, OutputDirectoryError
from stemzip.grouping import NameFilter

log = logging.getLogger(__name__)


# The lists below are typed Any, not list[str], so that a plain string given
# for one (extension=csv) reaches load_settings, whose message names the key,
# the value and the list to write instead; the schema's own message does not.


@dataclass
class NameFilters:
    # keep only names that contain every one of these substrings
    contains: Any = field(default_factory=list)
    # drop names that contain any of these substrings
    not_contains: Any = field(default_factory=list)
    # keep only names matching one of these glob patterns; empty keeps all
    include: Any = field(default_factory=list)
    # drop names matching any of these glob patterns
    exclude: Any = field(default_factory=list)


@dataclass
class StemFilename:
    # extensions of the stem files, without the dot; "yml" selects "run1.yml"
    extension: Any = field(default_factory=lambda: ["yml"])
    # filters applied to stem file names
    filters: NameFilters = field(default_factory=NameFilters)


@dataclass
class FileManagementConfig:
    # folder holding the stem files; relative to the folder stemzip started in
    input_directory: str = MISSING
    # folder for the archives, created if missing; null means the data folder
    output_directory: str | None = None
    filename: StemFilename = field(default_factory=StemFilename)


@dataclass
class DataFilename:
    # extensions of the data files to archive, without the dot
    extension: Any = field(default_factory=lambda: ["csv"])
    # filters applied to data file paths, relative to the data folder
    filters: NameFilters = field(default_factory=NameFilters)


@dataclass
class AnalysisConfig:
    # folder holding the data files; null means the stem folder
    input_directory: str | None = None
    # also search subfolders; members keep their paths relative to the folder
    recursive: bool = False
    # links among the data files: follow (archive the bytes of the regular
    # file a link points to) or skip (leave links out, reported per stem)
    symlinks: str = "follow"
    # also take hidden names (leading "."), editor backups (trailing "~",
    # .bak, .swp, .swo) and office lock files ("~$"), and enter hidden
    # folders; applies to stem files and data files alike
    include_hidden: bool = False
    filename: DataFilename = field(default_factory=DataFilename)


@dataclass
class OverwriteConfig:
    # true replaces an existing archive; false keeps it and skips the stem;
    # archive.if_exists, when set, takes precedence
    output: bool = True


@dataclass
class LegacyDefaultsConfig:
    overwrite: OverwriteConfig = field(default_factory=OverwriteConfig)


@dataclass
class DefaultConfig:
    config: LegacyDefaultsConfig = field(default_factory=LegacyDefaultsConfig)


@dataclass
class ArchiveConfig:
    # archive file name inside the output folder; {stem}, {date}, {time}
    name: str = "{stem}.zip"
    # member compression: stored, deflated, bzip2 or lzma
    compression: str = "deflated"
    # DEFLATE engine: auto (ISA-L when installed, else zlib), isal or zlib
    engine: str = "auto"
    # level in the compressor's own range (isal 0-3, zlib 0-9, bzip2 1-9);
    # null picks its default: isal 3, zlib 6, bzip2 9
    compresslevel: int | None = None
    # flush each archive to disk before it is renamed into place (slower)
    fsync: bool = False
    # read each new archive back and check its members and CRCs
    verify: bool = False
    # what happens to the sources once their archive is verified:
    # keep, delete or move
    after: str = "keep"
    # folder the sources are moved to with after=move
    move_to: str | None = None
    # what to do with an archive already at the target: overwrite, skip,
    # update (rebuild only when its members' names, sizes or dates differ
    # from the sources) or fail; null takes default.config.overwrite.output
    # (true is overwrite, false is skip)
    if_exists: str | None = None


@dataclass
class ExecutorConfig:
    _target_: str = MISSING
    # false runs the stems one after another in this process
    enabled: Any = True
    # "auto" is min(CPUs, stems); otherwise a positive whole number
    max_workers: Any = "auto"
    # seconds one stem may take before it is failed; 0 or null means no limit
    timeout_per_file: float | None = None
    # write a JSON report per failed stem into the job's output folder
    save_error_reports: bool = False
    # draw a progress bar on stderr when it is a terminal
    progress_reporting: bool = False


@dataclass
class ParallelConfig(ExecutorConfig):
    _target_: str = "stemzip.executors.ProcessPoolStemExecutor"
    # multiprocessing start method: fork, spawn, forkserver; null is Python's
    start_method: str | None = None


@dataclass
class ThreadsConfig(ExecutorConfig):
    _target_: str = "stemzip.executors.ThreadPoolStemExecutor"


@dataclass
class SequentialConfig(ExecutorConfig):
    _target_: str = "stemzip.executors.SequentialStemExecutor"


@dataclass
class DaskConfig(ExecutorConfig):
    _target_: str = "stemzip.cluster.DaskStemExecutor"
    # scheduler address, e.g. tcp://head-node:8786; null starts a local cluster
    address: str | None = None


@dataclass
class StemzipConfig:
    # key of the composed config under which per-stem results are written
    basename: str = "zip_utilities"
    # plan and print, write nothing
    dry_run: bool = False
    file_management: FileManagementConfig = field(default_factory=FileManagementConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    default: DefaultConfig = field(default_factory=DefaultConfig)
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)
    # chosen through the defaults list: parallel, threads, sequential or dask
    parallel_processing: Any = MISSING


EXECUTOR_OPTIONS = {
    "parallel": ParallelConfig,
    "threads": ThreadsConfig,
    "sequential": SequentialConfig,
    "dask": DaskConfig,
}


def register_configs() -> None:
    """Register the schema and the executor options in Hydra's ConfigStore."""
    store = ConfigStore.instance()
    store.store(name="stemzip_base", node=StemzipConfig)
    for name, node in EXECUTOR_OPTIONS.items():
        store.store(group="parallel_processing", name=name, node=node)


# what archive.if_exists may say to do with an archive already at the target
IF_EXISTS = ("overwrite", "skip", "update", "fail")


@dataclass(frozen=True)
class RunSettings:
    """Everything one run needs, as plain values with folders resolved."""

    basename: str
    stem_directory: Path
    data_directory: Path
    output_directory: Path
    stem_extensions: tuple[str, ...]
    data_extensions: tuple[str, ...]
    stem_filter: NameFilter = field(default_factory=NameFilter)
    data_filter: NameFilter = field(default_factory=NameFilter)
    recursive: bool = False
    # what to do with an archive already at the target: one of IF_EXISTS
    if_exists: str = "overwrite"
    # archive file name, relative to the output folder, with {stem} and more
    archive_name: str = "{stem}.zip"
    archive: ArchiveOptions = field(default_factory=ArchiveOptions)
    dry_run: bool = False
    # links among the data files: archived with their target's bytes (true),
    # or left out (false)
    follow_links: bool = True
    # hidden names, editor backups and lock files count as stem and data files
    include_hidden: bool = False


def _lookup(cfg: Any, key: str, default: Any = None) -> Any:
    node = cfg
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if node is None:
            return default
        if not isinstance(node, Mapping):
            # a group given a plain value (filters: x) must not be passed over
            # for its defaults
            section = ".".join(parts[:depth])
            raise ConfigError(f"{section} must be a group of settings, got {node!r}")
        if part not in node:
            return default
        node = node[part]
    # a mandatory value left unset reads as "???" once converted to a dict
    return default if node is None or node == MISSING else node


def _flag(cfg: Any, key: str, default: bool) -> bool:
    value = _lookup(cfg, key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    return value


def _string_list(cfg: Any, key: str, default: Sequence[str] = ()) -> tuple[str, ...]:
    value = _lookup(cfg, key, default)
    if isinstance(value, str):
        raise ConfigError(
            f"{key} must be a list of strings, got {value!r}; "
            f"write it as a list, e.g. {key}=[{value}]"
        )
    if not isinstance(value, Sequence) or isinstance(value, bytes):
        raise ConfigError(
            f"{key} must be a list of strings, got {value!r}; e.g. {key}=[csv,txt]"
        )
    if not all(isinstance(item, str) and item for item in value):
        raise ConfigError(f"{key} must hold non-empty strings, got {list(value)!r}")
    return tuple(value)


def _extensions(cfg: Any, key: str, default: Sequence[str]) -> tuple[str, ...]:
    values = tuple(ext.lstrip(".") for ext in _string_list(cfg, key, default))
    if not values or not all(values):
        raise ConfigError(f"{key} must name at least one extension, got {values!r}")
    return values


def _name_filter(cfg: Any, key: str) -> NameFilter:
    return NameFilter(
        contains=_string_list(cfg, f"{key}.contains"),
        not_contains=_string_list(cfg, f"{key}.not_contains"),
        include=_string_list(cfg, f"{key}.include"),
        exclude=_string_list(cfg, f"{key}.exclude"),
    )


def _folder_value(cfg: Any, key: str) -> str | None:
    value = _lookup(cfg, key)
    if value is not None and not isinstance(value, (str, Path)):
        raise ConfigError(f"{key} must be a folder path, got {value!r}")
    if isinstance(value, str) and not value.strip():
        # resolved, an empty path would be the folder the command started in
        raise ConfigError(
            f"{key} is empty ({value!r}); give a folder, or . for the folder "
            "stemzip starts in"
        )
    return None if value is None else str(value)


def _resolve(base_dir: Path, value: str, key: str) -> Path:
    try:
        return (base_dir / Path(value).expanduser()).resolve()
    except (OSError, RuntimeError) as exc:  # a link loop on the way
        raise InputDirectoryError(f"{key} {value!r} cannot be resolved: {exc}") from exc


def _input_folder(cfg: Any, key: str, base_dir: Path, fallback: Path | None) -> Path:
    value = _folder_value(cfg, key)
    if value is None:
        if fallback is None:
            raise InputDirectoryError(
                f"{key} is not set; give the folder, e.g. {key}=path/to/runs"
            )
        return fallback
    folder = _resolve(base_dir, value, key)
    try:
        if not folder.exists():
            raise InputDirectoryError(
                f"{key} {str(value)!r} does not exist (resolved to {folder}); "
                f"set {key}=<an existing folder>"
            )
        if not folder.is_dir():
            raise InputDirectoryError(
                f"{key} {str(value)!r} is not a folder (resolved to {folder}); "
                f"set {key}=<a folder>"
            )
        # listed once now, so that a folder this user may not read is refused
        # here with its key, not half way through planning
        with os.scandir(folder):
            pass
    except PermissionError as exc:
        raise InputDirectoryError(
            f"{key} {str(value)!r} cannot be read (resolved to {folder}: "
            f"{exc.strerror}); make it readable or set {key}=<a readable folder>"
        ) from exc
    return folder


def _output_folder(cfg: Any, key: str, base_dir: Path, fallback: Path | None) -> Path:
    value = _folder_value(cfg, key)
    if value is None:
        if fallback is None:
            raise ConfigError(f"{key} is not set; give the folder, e.g. {key}=moved")
        return fallback
    folder = _resolve(base_dir, value, key)
    # the folder, or the first of its parents that exists, must be a folder
    existing = next(p for p in (folder, *folder.parents) if os.path.exists(p))
    if existing == folder and not folder.is_dir():
        raise OutputDirectoryError(
            f"{key} {str(value)!r} is a file, not a folder (resolved to {folder}); "
            f"set {key}=<a folder>"
        )
    if not existing.is_dir():
        raise OutputDirectoryError(
            f"{key} {str(value)!r} cannot be made: {existing} is a file (resolved "
            f"to {folder}); set {key}=<a folder>"
        )
    return folder


_NAME_FIELDS = {"stem", "date", "time"}


def _archive_name(cfg: Any) -> str:
    key = "archive.name"
    template = str(_lookup(cfg, key, "{stem}.zip"))
    try:
        parts = [p for p in string.Formatter().parse(template) if p[1] is not None]
    except ValueError as exc:
        raise ConfigError(f"{key} {template!r} is not a valid template: {exc}") from exc
    # a format spec or conversion ({stem:.3}, {stem!r}) could give two stems
    # one archive, so fields are taken only bare
    if any(spec or conversion for _, _, spec, conversion in parts):
        raise ConfigError(
            f"{key} {template!r} may use {{stem}}, {{date}} and {{time}} only as "
            "they are, with no format spec or conversion"
        )
    fields = {name for _, name, _, _ in parts}
    if not fields <= _NAME_FIELDS or "stem" not in fields:
        raise ConfigError(
            f"{key} {template!r} must contain {{stem}} and may use only "
            f"{{stem}}, {{date}} and {{time}}; e.g. \"{key}='{{stem}}_{{date}}.zip'\" "
            "(quoted so that the shell keeps the inner quotes for Hydra)"
        )
    sample = PurePosixPath(template.format(stem="s", date="20260101", time="000000"))
    if sample.is_absolute() or ".." in sample.parts or "\\" in template:
        raise ConfigError(
            f"{key} {template!r} must stay inside the output folder: no absolute "
            "path, no '..', forward slashes only"
        )
    if is_temporary(sample.name):
        # a later run would take the archive for one a killed run left
        raise ConfigError(
            f"{key} {template!r} names archives the way stemzip names its "
            "temporary files (.<name>.<8 hex digits>.part); choose another name"
        )
    return template


def _archive_options(cfg: Any, base_dir: Path) -> ArchiveOptions:
    # the archive section is stemzip's own, so a key it does not know is a typo
    # (other sections also carry keys of the frameworks that share them)
    known = {f.name for f in fields(ArchiveConfig)}
    unknown = sorted(set(_lookup(cfg, "archive", {})) - known)
    if unknown:
        raise ConfigError(
            f"archive has no key {unknown[0]!r}; "
            f"the keys are {', '.join(sorted(known))}"
        )
    level = _lookup(cfg, "archive.compresslevel")
    if level is not None and (isinstance(level, bool) or not isinstance(level, int)):
        raise ConfigError(
            f"archive.compresslevel must be a whole number, got {level!r}"
        )
    after = str(_lookup(cfg, "archive.after", "keep"))
    if after not in AFTER_ACTIONS:
        raise ConfigError(
            f"archive.after {after!r} is not one of {', '.join(AFTER_ACTIONS)}; "
            "set archive.after=keep"
        )
    move_to = None
    if after == "move":
        move_to = str(_output_folder(cfg, "archive.move_to", base_dir, None))
    options = ArchiveOptions(
        compression=str(_lookup(cfg, "archive.compression", "deflated")),
        engine=str(_lookup(cfg, "archive.engine", "auto")),
        compresslevel=level,
        fsync=_flag(cfg, "archive.fsync", False),
        verify=_flag(cfg, "archive.verify", False) or after != "keep",
        after=after,
        move_to=move_to,
    )
    options.check()
    return options


def _if_exists(cfg: Any) -> str:
    # the older framework's flag still decides when if_exists is not given
    legacy = _flag(cfg, "default.config.overwrite.output", True)
    value = _lookup(cfg, "archive.if_exists")
    if value is None:
        return "overwrite" if legacy else "skip"
    if not isinstance(value, str) or value not in IF_EXISTS:
        raise ConfigError(
            f"archive.if_exists {value!r} is not one of {', '.join(IF_EXISTS)}; "
            "set archive.if_exists=update to rebuild only archives whose sources "
            "changed"
        )
    return value


SYMLINK_CHOICES = ("follow", "skip")


def _follow_links(cfg: Any) -> bool:
    key = "analysis.symlinks"
    value = _lookup(cfg, key, "follow")
    if not isinstance(value, str) or value not in SYMLINK_CHOICES:
        raise ConfigError(
            f"{key} {value!r} is not one of {', '.join(SYMLINK_CHOICES)}; set "
            f"{key}=follow to archive what links point to, or {key}=skip to "
            "leave links out"
        )
    return value == "follow"


def _mapping(cfg: DictConfig | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(cfg, DictConfig):
        try:
            container = OmegaConf.to_container(
                cfg, resolve=True, throw_on_missing=False
            )
        except OmegaConfBaseException as exc:
            # an interpolation that cannot be resolved (${nope}, ${oc.env:X})
            key = getattr(exc, "full_key", None) or "the configuration"
            # the first line is the reason; OmegaConf adds the node's types
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(
                f"{key} cannot be resolved: {reason}; fix the interpolation or "
                f"set {key}=<a value>"
            ) from None
        assert isinstance(container, dict)
        return {str(key): value for key, value in container.items()}
    return cfg


_SECTIONS = ("file_management", "analysis", "default", "archive", "parallel_processing")
# keys the results must not be written over
_RESERVED = {*_SECTIONS, "basename", "dry_run", "hydra"}


def _check_sections(values: Mapping[str, Any]) -> None:
    for section in _SECTIONS:
        value = _lookup(values, section, {})
        if value is not None and not isinstance(value, Mapping):
            raise ConfigError(f"{section} must be a group of settings, got {value!r}")


def _basename(values: Mapping[str, Any]) -> str:
    basename = _lookup(values, "basename", "zip_utilities")
    if not isinstance(basename, str) or not basename or basename in _RESERVED:
        raise ConfigError(
            f"basename must be a non-empty string that names no setting of "
            f"stemzip ({', '.join(sorted(_RESERVED))}), got {basename!r}"
        )
    return basename


def load_settings(cfg: DictConfig | Mapping[str, Any], base_dir: Path) -> RunSettings:
    """Check a composed config and turn it into :class:`RunSettings`.

    Relative folders are resolved against ``base_dir``. Raises
    :class:`~stemzip.errors.ConfigError` for a bad value and
    :class:`~stemzip.errors.InputDirectoryError` for a missing folder; no file
    is created or changed.
    """
    values = _mapping(cfg)
    _check_sections(values)
    basename = _basename(values)

    stem_directory = _input_folder(
        values, "file_management.input_directory", base_dir, None
    )
    data_directory = _input_folder(
        values, "analysis.input_directory", base_dir, stem_directory
    )
    output_directory = _output_folder(
        values, "file_management.output_directory", base_dir, data_directory
    )

    return RunSettings(
        basename=basename,
        stem_directory=stem_directory,
        data_directory=data_directory,
        output_directory=output_directory,
        stem_extensions=_extensions(
            values, "file_management.filename.extension", ["yml"]
        ),
        data_extensions=_extensions(values, "analysis.filename.extension", ["csv"]),
        stem_filter=_name_filter(values, "file_management.filename.filters"),
        data_filter=_name_filter(values, "analysis.filename.filters"),
        recursive=_flag(values, "analysis.recursive", False),
        follow_links=_follow_links(values),
        include_hidden=_flag(values, "analysis.include_hidden", False),
        if_exists=_if_exists(values),
        archive_name=_archive_name(values),
        archive=_archive_options(values, base_dir),
        dry_run=_flag(values, "dry_run", False),
    )


register_configs()
