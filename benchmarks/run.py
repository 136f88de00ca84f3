"""Time stemzip beside Info-ZIP and the contains-match baseline, check targets.

Every tool runs as a whole process, timed from outside with
``time.perf_counter`` around ``subprocess.run``; each figure is the median of
``--repeat`` runs, and the output folder is emptied before every run. Ratios
are taken within one invocation, because the machines are shared and
absolute times drift. The exit status is 0 whatever the verdicts: this is a
measurement, not a test.

usage: python benchmarks/run.py [--sets large,many,tiny1k,tiny10k]
                                [--repeat 3] [--work DIR]
"""

from __future__ import annotations

import argparse
import glob
import json
import operator
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets

BASELINE_SCRIPT = Path(__file__).resolve().parent / "baseline.py"
# the baseline lists the data folder once per stem; on large it has few stems
# and stores without compressing, so it says nothing about the targets there
BASELINE_SETS = frozenset({"many", "tiny1k", "tiny10k"})
# one zip process per stem takes minutes on the tiny sets, where no target
# uses it
INFOZIP_SETS = frozenset({"large", "many"})
DEFAULT_WORK = Path(tempfile.gettempdir()) / "stemzip-bench"

STEMZIP = "stemzip"
INFOZIP = "Info-ZIP seq"
BASELINE = "contains baseline"

# runs one tool once: (data root, empty output folder, empty scratch folder)
Tool = Callable[[Path, Path, Path], None]
_COMPARE = {"<=": operator.le, ">=": operator.ge, "<": operator.lt}


class ToolFailed(RuntimeError):
    """Raised when a measured command exits with a non-zero status."""


def _call(command: list[str], cwd: Path | None = None) -> None:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise ToolFailed(
            f"{Path(command[0]).name} exited with {done.returncode}: "
            + " | ".join(tail)
        )


def stemzip_script() -> Path:
    """The ``stemzip`` console script installed beside this interpreter."""
    # not resolved: a virtualenv's python is a link out of the venv's bin/
    return Path(sys.executable).parent / "stemzip"


def run_stemzip(root: Path, out: Path, scratch: Path) -> None:
    """The installed command with its defaults, started where no conf/ exists."""
    _call(
        [
            str(stemzip_script()),
            f"file_management.input_directory={root / 'stems'}",
            f"analysis.input_directory={root / 'csv'}",
            f"file_management.output_directory={out}",
            f"hydra.run.dir={scratch / 'hydra'}",
        ],
        cwd=scratch,
    )


def _stems(root: Path) -> list[str]:
    return sorted(path.stem for path in (root / "stems").glob("*.yml"))


def run_infozip(root: Path, out: Path, scratch: Path) -> None:
    """One ``zip -q -j -6`` per stem, one after another, as a shell loop would."""
    for stem in _stems(root):
        pattern = str(root / "csv" / f"{glob.escape(stem)}_*.csv")
        members = sorted(glob.glob(pattern))
        _call(["zip", "-q", "-j", "-6", str(out / f"{stem}.zip"), *members])


def run_baseline(root: Path, out: Path, scratch: Path) -> None:
    """The contains-match algorithm, in its own interpreter."""
    _call([sys.executable, str(BASELINE_SCRIPT), str(root), str(out)])


@dataclass
class Measurement:
    """The runs of one tool on one set, and the archives the last run left."""

    set_name: str
    tool: str
    runs: list[float] = field(default_factory=list)
    archives: int = 0
    archive_bytes: int = 0
    error: str | None = None

    @property
    def seconds(self) -> float | None:
        return statistics.median(self.runs) if self.runs else None


def _empty(folder: Path) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def _archive_totals(out: Path) -> tuple[int, int]:
    sizes = [path.stat().st_size for path in out.glob("*.zip")]
    return len(sizes), sum(sizes)


def _warm(root: Path) -> None:
    """Read every input file once, so that each tool starts on a warm cache.

    These machines keep little in the page cache; without this, whichever
    tool runs first after a pause reads from disk and the others do not.
    """
    for path in root.rglob("*"):
        if path.is_file():
            with path.open("rb") as source:
                while source.read(1 << 20):
                    pass


def _run_once(result: Measurement, tool: Tool, root: Path, work: Path) -> None:
    """Run ``tool`` once into emptied folders and record the time or failure.

    The archives stay in ``work/out/<set>/<tool>`` and the scratch folder
    (stemzip's Hydra log and results.yaml) in ``work/scratch/...``.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", result.tool.lower()).strip("-")
    out = _empty(work / "out" / result.set_name / slug)
    scratch = _empty(work / "scratch" / result.set_name / slug)
    # the deletions just made are flushed now, not charged to the next tool:
    # a file system still discarding 10,000 freed files creates new ones
    # several times slower, which would swamp the fast tools' times
    os.sync()
    _warm(root)
    started = time.perf_counter()
    try:
        tool(root, out, scratch)
    except ToolFailed as exc:
        result.error = str(exc)
    finally:
        result.runs.append(time.perf_counter() - started)
    result.archives, result.archive_bytes = _archive_totals(out)


def measure(
    tools: list[tuple[str, Tool]], root: Path, work: Path, set_name: str, repeat: int
) -> list[Measurement]:
    """Run every tool on ``root`` ``repeat`` times, taking turns.

    Turns, not one tool's runs in a row: a machine that gets busier or quieter
    during the set then weighs on every tool alike. A tool that fails is not
    run again.
    """
    results = [Measurement(set_name, name) for name, _ in tools]
    for _ in range(repeat):
        for result, (_, tool) in zip(results, tools, strict=True):
            if result.error is None:
                _run_once(result, tool, root, work)
    return results


def measure_help(work: Path, repeat: int) -> Measurement:
    """Wall time of ``stemzip --help``: what every start of the command costs."""

    def show_help(root: Path, out: Path, scratch: Path) -> None:
        _call([str(stemzip_script()), "--help"], cwd=scratch)

    (result,) = measure([("stemzip --help", show_help)], work, work, "help", repeat)
    return result


def tools_for(set_name: str) -> list[tuple[str, Tool]]:
    """The tools measured on ``set_name``, stemzip first."""
    tools: list[tuple[str, Tool]] = [(STEMZIP, run_stemzip)]
    if shutil.which("zip") and set_name in INFOZIP_SETS:
        tools.append((INFOZIP, run_infozip))
    if set_name in BASELINE_SETS:
        tools.append((BASELINE, run_baseline))
    return tools


@dataclass(frozen=True)
class Target:
    """One goal: ``value`` compared with ``limit``; None when not measured."""

    name: str
    value: float | None
    comparison: str
    limit: float
    unit: str
    # why the value is missing or cannot be trusted
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "SKIP"
        passed = _COMPARE[self.comparison](self.value, self.limit)
        return "PASS" if passed and not self.note else "FAIL"


Table = dict[tuple[str, str], Measurement]


def _ratio(
    top: Measurement | None, bottom: Measurement | None, attr: str
) -> tuple[float | None, str]:
    if top is None or bottom is None:
        return None, "not measured"
    note = "; ".join(
        f"{m.set_name} {m.tool}: {m.error}" for m in (top, bottom) if m.error
    )
    numerator, denominator = getattr(top, attr), getattr(bottom, attr)
    if not numerator or not denominator:
        return None, note or "nothing to compare"
    return numerator / denominator, note


def evaluate(table: Table, help_run: Measurement) -> list[Target]:
    """The project's targets, from one invocation's measurements."""

    def ratio(
        name: str, top: tuple[str, str], bottom: tuple[str, str], attr: str, goal: str
    ) -> Target:
        comparison, limit = goal.split()
        value, note = _ratio(table.get(top), table.get(bottom), attr)
        return Target(name, value, comparison, float(limit), "x", note)

    return [
        ratio(
            "large: Info-ZIP seq / stemzip time",
            ("large", INFOZIP),
            ("large", STEMZIP),
            "seconds",
            ">= 15",
        ),
        ratio(
            "large: stemzip / Info-ZIP bytes",
            ("large", STEMZIP),
            ("large", INFOZIP),
            "archive_bytes",
            "<= 1.03",
        ),
        ratio(
            "many: Info-ZIP seq / stemzip time",
            ("many", INFOZIP),
            ("many", STEMZIP),
            "seconds",
            ">= 5",
        ),
        ratio(
            "tiny10k: baseline / stemzip time",
            ("tiny10k", BASELINE),
            ("tiny10k", STEMZIP),
            "seconds",
            ">= 15",
        ),
        ratio(
            "stemzip time tiny10k / tiny1k",
            ("tiny10k", STEMZIP),
            ("tiny1k", STEMZIP),
            "seconds",
            "<= 12",
        ),
        Target(
            "stemzip --help wall time",
            help_run.seconds,
            "<",
            0.6,
            "s",
            help_run.error or "",
        ),
    ]


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_report(table: Table, help_run: Measurement, targets: list[Target]) -> None:
    print(f"\n{'set':<9} {'tool':<18} {'seconds':>8} {'archives':>9} {'bytes':>13}")
    for item in table.values():
        line = (
            f"{item.set_name:<9} {item.tool:<18} {_seconds(item.seconds):>8} "
            f"{item.archives:>9} {item.archive_bytes:>13,}"
        )
        print(line + (f"  ERROR {item.error}" if item.error else ""))
    print(f"{'-':<9} {help_run.tool:<18} {_seconds(help_run.seconds):>8}")

    print(f"\n{'target':<38} {'measured':>9} {'goal':>9}  verdict")
    for target in targets:
        value = "-" if target.value is None else f"{target.value:.3g}{target.unit}"
        goal = f"{target.comparison} {target.limit:g}{target.unit}"
        note = f"  ({target.note})" if target.note else ""
        print(f"{target.name:<38} {value:>9} {goal:>9}  {target.verdict}{note}")


def _check_archive_counts(table: Table, specs: list[datasets.DataSet]) -> None:
    stems = {spec.name: spec.stems for spec in specs}
    for item in table.values():
        if item.error is None and item.archives != stems[item.set_name]:
            item.error = f"{item.archives} archives for {stems[item.set_name]} stems"


def write_json(path: Path, payload: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default=",".join(datasets.SETS))
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    args = parser.parse_args()
    try:
        args.specs = datasets.parse_sets(args.sets)
    except ValueError as exc:
        parser.error(str(exc))
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {args.repeat}")
    args.work = args.work.resolve()
    return args


def measure_sets(
    specs: list[datasets.DataSet], work: Path, repeat: int
) -> tuple[Table, dict[str, float | None]]:
    """Measure every tool on every set, generating sets that are missing.

    Returns the measurements and the seconds each set took to generate
    (None for a set found in the cache).
    """
    table: Table = {}
    generation: dict[str, float | None] = {}
    for spec in specs:
        root = work / "data" / spec.name
        seconds = generation[spec.name] = datasets.ensure(spec, root)
        print(
            f"{spec.name}: data {'cached' if seconds is None else f'{seconds:.1f} s'}"
        )
        for item in measure(tools_for(spec.name), root, work, spec.name, repeat):
            table[spec.name, item.tool] = item
            print(f"  {item.tool:<18} {_seconds(item.seconds):>8} s", flush=True)
    _check_archive_counts(table, specs)
    return table, generation


def _payload(
    table: Table,
    help_run: Measurement,
    targets: list[Target],
    generation: dict[str, float | None],
    repeat: int,
) -> dict[str, object]:
    measurements = [*table.values(), help_run]
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "stemzip": str(stemzip_script()),
        "repeat": repeat,
        "generation_seconds": generation,
        "measurements": [asdict(m) | {"seconds": m.seconds} for m in measurements],
        "targets": [asdict(t) | {"verdict": t.verdict} for t in targets],
    }


def main() -> int:
    args = _parse_args()
    if not stemzip_script().exists():
        print(f"no stemzip command at {stemzip_script()}", file=sys.stderr)
        return 0
    if not shutil.which("zip"):
        print("zip is not on PATH: Info-ZIP is not measured", file=sys.stderr)

    table, generation = measure_sets(args.specs, args.work, args.repeat)
    help_run = measure_help(args.work, args.repeat)
    targets = evaluate(table, help_run)

    print_report(table, help_run, targets)
    results = args.work / "results.json"
    write_json(results, _payload(table, help_run, targets, generation, args.repeat))
    print(f"\nresults written to {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
