"""The ``stemzip`` command: a Hydra app around :func:`stemzip.task.run`.

Exit status: 0 when every stem was zipped, skipped or had no data files;
1 when any stem failed; 2 when the configuration was refused; 130 when
interrupted; 141 when stdout was closed by its reader.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf

from stemzip import __version__
from stemzip.errors import RunInterrupted, StemzipError
from stemzip.results import Status, summarise
from stemzip.task import execute, literal

log = logging.getLogger(__name__)

EXIT_FAILED_STEMS = 1
EXIT_BAD_CONFIG = 2
PROJECT_CONFIG = Path("conf") / "config.yaml"

EXIT_INTERRUPTED = 130
# as a shell reports a command that SIGPIPE ended
EXIT_OUTPUT_CLOSED = 141
# exit status owed by the jobs of this process (a multirun runs several),
# and how many jobs started
_outcome = {"status": 0, "jobs": 0}


def _record(status: int) -> None:
    _outcome["status"] = max(_outcome["status"], status)


def _quiet_stdout() -> None:
    # nothing more reaches a reader that went away, not even at exit
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _print_plan(text: str) -> None:
    try:
        print(text, end="", flush=True)
    except BrokenPipeError:
        # the reader stopped reading (| head): the run goes on without it
        _quiet_stdout()


# a character beyond U+FFFF as JSON escapes it: a surrogate pair, after an
# even number of backslashes (an odd one would escape the first of them)
_SURROGATE_PAIR = re.compile(
    r"(?<!\\)((?:\\\\)*)\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})"
)


def _one_escape(match: re.Match[str]) -> str:
    # YAML reads a pair of escapes as two lone surrogates, not as the one
    # character; its own 8-digit escape holds the character whole
    high, low = int(match[2], 16), int(match[3], 16)
    code = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
    return f"{match[1]}\\U{code:08x}"


def _json_line(entry: dict[str, Any]) -> str:
    line = json.dumps(entry)
    # rare; checked on the line so most entries are walked once
    if "${" in line:
        line = json.dumps(literal(entry))
    if "\\ud" in line:
        line = _SURROGATE_PAIR.sub(_one_escape, line)
    # the one ASCII character JSON leaves as it is and YAML refuses to read
    return line.replace("\x7f", "\\u007f")


def save_results(
    path: Path, cfg: DictConfig, basename: str, entries: list[dict[str, Any]]
) -> None:
    """Write the job's config with the results under ``basename``, as YAML.

    Each result is one line in flow style, written by the json module: JSON is
    valid YAML, and this is many times faster than building config nodes or
    PyYAML's representer for tens of thousands of entries. Non-ASCII
    characters are escaped, so the file is ASCII; names that are not valid
    UTF-8 arrive as their ``%XX`` substitutes (:meth:`StemResult.to_dict`).
    ``${`` is escaped as in ``cfg[basename]``, so that ``OmegaConf.load``
    reads names as they are, as it reads the config above them.
    """
    lines = [f"{basename}:" + ("" if entries else " []")]
    lines.extend(f"- {_json_line(entry)}" for entry in entries)
    path.write_text(OmegaConf.to_yaml(cfg) + "\n".join(lines) + "\n")


def zip_job(cfg: DictConfig) -> dict[str, Any]:
    """One Hydra job: zip, save ``results.yaml``, note the exit status.

    Returns the job's figures (seconds, archives, failures, bytes), which the
    sweep summary callback records.
    """
    started = time.perf_counter()
    _outcome["jobs"] += 1
    results_path = Path(HydraConfig.get().runtime.output_dir) / "results.yaml"
    try:
        settings, results = execute(cfg, show_plan=_print_plan)
    except StemzipError as exc:
        log.error("%s", exc)
        _record(EXIT_BAD_CONFIG)
        return {"error": str(exc), "seconds": time.perf_counter() - started}
    except RunInterrupted as exc:
        # what was done before the interrupt is saved; the stems missing
        # from the file were not done
        assert exc.basename is not None
        entries = [result.to_dict() for result in exc.results]
        save_results(results_path, cfg, exc.basename, entries)
        log.warning(
            "results of the %d stems done saved to %s", len(entries), results_path
        )
        raise

    entries = [result.to_dict() for result in results]
    save_results(results_path, cfg, settings.basename, entries)
    log.info("results saved to %s", results_path)
    summary = summarise(results)
    if summary.failed:
        _record(EXIT_FAILED_STEMS)
    return {
        "seconds": time.perf_counter() - started,
        "stems": len(results),
        "archives": summary.counts.get(Status.ZIPPED, 0),
        "failed": summary.failed,
        "bytes_in": summary.bytes_in,
        "bytes_out": summary.bytes_out,
    }


def _builds_on_stemzip(config: Path) -> bool:
    try:
        loaded = OmegaConf.load(config)
    except Exception:  # unreadable or not YAML: not a stemzip config
        return False
    defaults = loaded.get("defaults") if isinstance(loaded, DictConfig) else None
    if not isinstance(defaults, ListConfig):
        return False
    names = [next(iter(d), None) if isinstance(d, DictConfig) else d for d in defaults]
    return "stemzip" in names or "stemzip_base" in names


def _config_path() -> str:
    # a project's own conf/config.yaml, in the folder stemzip starts in, takes
    # the place of the package's, provided it builds on stemzip's defaults; a
    # conf/ folder of some other Hydra app is left alone
    project = Path.cwd() / PROJECT_CONFIG
    if project.is_file() and _builds_on_stemzip(project):
        return str(project.parent)
    return "conf"


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    """Console entry point of ``stemzip``."""
    if sys.argv[1:] == ["--version"]:
        try:
            print(f"stemzip {__version__} (Hydra {hydra.__version__})", flush=True)
        except BrokenPipeError:
            _quiet_stdout()
            sys.exit(EXIT_OUTPUT_CLOSED)
        return
    _outcome.update(status=0, jobs=0)
    task = hydra.main(
        version_base="1.3", config_path=_config_path(), config_name="config"
    )(zip_job)
    # a scheduler's SIGTERM stops the run as Ctrl-C does, in order
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        task()
    except KeyboardInterrupt:
        print("stemzip: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        # the reader of --help went away: no traceback
        _quiet_stdout()
        sys.exit(EXIT_OUTPUT_CLOSED)
    except SystemExit as exc:
        # Hydra exits 1 when it cannot compose the config (a bad type, an
        # unknown key or option); before any job ran, that is a refused config
        if exc.code not in (0, None) and not _outcome["jobs"]:
            sys.exit(EXIT_BAD_CONFIG)
        raise
    sys.exit(_outcome["status"])
