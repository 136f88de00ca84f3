"""Synthetic simulation outputs for the benchmarks, generated on demand.

A set's folder holds ``stems/<stem>.yml``, one run definition per stem, and
``csv/<stem>_<channel>.csv``, the numeric time series to be zipped. The bytes
depend only on the set's parameters and seed, and a finished set carries a
marker file so a second call with the same parameters does no work.

usage: python benchmarks/datasets.py WORK [--sets large,many,tiny1k,tiny10k]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

CHANNELS = ("forces", "motion", "tension", "moments", "summary", "spectra")
MARKER = ".complete.json"
# raise when the bytes written for the same parameters change, so that
# cached sets made by an older generator are rebuilt
GENERATOR_VERSION = 1

_HEADER = "time,fx,fy,fz,mx,my,mz\n"
# about 74 bytes a row: a time column and six channels with six decimals
_ROW = "%.1f" + ",%.6f" * 6 + "\n"
# a uniform step of this width has a standard deviation of about 5
_STEP = 17.0


@dataclass(frozen=True)
class DataSet:
    """The shape of one generated set."""

    name: str
    stems: int
    files_per_stem: int
    # rows of data in each CSV file, after the header
    rows: int
    seed: int = 7

    def stem_names(self) -> list[str]:
        """``run01``, ``run02``, ...: zero-padded, so no stem prefixes another."""
        width = len(str(self.stems))
        return [f"run{index:0{width}d}" for index in range(1, self.stems + 1)]

    def channels(self) -> tuple[str, ...]:
        return CHANNELS[: self.files_per_stem]


SETS: dict[str, DataSet] = {
    spec.name: spec
    for spec in (
        DataSet("large", stems=24, files_per_stem=4, rows=30_000),
        DataSet("many", stems=2_000, files_per_stem=3, rows=80),
        DataSet("tiny1k", stems=1_000, files_per_stem=3, rows=5),
        DataSet("tiny10k", stems=10_000, files_per_stem=3, rows=5),
    )
}


def _series(rows: int, rng: random.Random) -> str:
    # a random walk per channel: digits vary like real signals and compress
    # about as well (DEFLATE level 6 keeps roughly 47 %)
    uniform = rng.random
    a, b, c, d, e, f = (rng.uniform(-1e3, 1e3) for _ in range(6))
    lines = [_HEADER]
    for step in range(1, rows + 1):
        a += (uniform() - 0.5) * _STEP
        b += (uniform() - 0.5) * _STEP
        c += (uniform() - 0.5) * _STEP
        d += (uniform() - 0.5) * _STEP
        e += (uniform() - 0.5) * _STEP
        f += (uniform() - 0.5) * _STEP
        lines.append(_ROW % (step / 10, a, b, c, d, e, f))
    return "".join(lines)


def _write_stem(spec: DataSet, root: Path, stem: str) -> None:
    (root / "stems" / f"{stem}.yml").write_text(f"name: {stem}\nduration: 3600\n")
    for channel in spec.channels():
        # one generator per file, seeded by its name, so each file's bytes
        # stay the same whatever the order or subset written
        rng = random.Random(f"{spec.seed}/{stem}/{channel}")
        path = root / "csv" / f"{stem}_{channel}.csv"
        path.write_text(_series(spec.rows, rng))


def _marker(spec: DataSet) -> dict[str, object]:
    return {"generator": GENERATOR_VERSION, **asdict(spec)}


def is_current(spec: DataSet, root: Path) -> bool:
    """Whether ``root`` already holds ``spec``, completely written."""
    try:
        recorded = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return bool(recorded == _marker(spec))


def generate(spec: DataSet, root: Path) -> None:
    """Write ``spec`` into ``root``, replacing whatever the folder held.

    The marker is written last, so an interrupted run is redone next time.
    """
    if root.exists():
        shutil.rmtree(root)
    (root / "stems").mkdir(parents=True)
    (root / "csv").mkdir()

    for stem in spec.stem_names():
        _write_stem(spec, root, stem)
    (root / MARKER).write_text(json.dumps(_marker(spec), indent=2) + "\n")


def ensure(spec: DataSet, root: Path) -> float | None:
    """Generate ``spec`` into ``root`` unless it is there already.

    Returns the seconds spent generating, or None when the cached set was kept.
    """
    if is_current(spec, root):
        return None
    started = time.perf_counter()
    generate(spec, root)
    return time.perf_counter() - started


def parse_sets(text: str) -> list[DataSet]:
    """The sets named in a comma-separated list; raises ValueError for others."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SETS]
    if unknown or not names:
        raise ValueError(
            f"unknown data set(s) {unknown or text!r}; choose from {', '.join(SETS)}"
        )
    return [SETS[name] for name in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path, help="each set goes to WORK/<set>")
    parser.add_argument("--sets", default=",".join(SETS), help="comma-separated")
    args = parser.parse_args()
    try:
        specs = parse_sets(args.sets)
    except ValueError as exc:
        parser.error(str(exc))

    for spec in specs:
        seconds = ensure(spec, args.work / spec.name)
        state = "cached" if seconds is None else f"generated in {seconds:.1f} s"
        print(f"{spec.name}: {args.work / spec.name} ({state})")


if __name__ == "__main__":
    main()
