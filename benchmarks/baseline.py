"""The contains-match algorithm that stemzip replaces, written out for timing.

Each stem is one task in a process pool. The task lists the whole data folder,
keeps every name that contains the stem anywhere and ends in ``.csv``, and
stores those files in a ZIP without compression. Listing the folder once per
stem makes the work grow with stems times files, which is what the comparison
is meant to show. Stems are the ``.yml`` names in ``ROOT/stems``; the data
files are in ``ROOT/csv``.

usage: python benchmarks/baseline.py ROOT OUT
"""

from __future__ import annotations

import os
import sys
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def archive_stem(stem: str, data_dir: str, out_dir: str) -> int:
    """Zip the data files whose names contain ``stem``; return how many."""
    members = [
        name for name in os.listdir(data_dir) if stem in name and name.endswith(".csv")
    ]
    with zipfile.ZipFile(os.path.join(out_dir, f"{stem}.zip"), "w") as archive:
        for name in members:
            archive.write(os.path.join(data_dir, name), name)
    return len(members)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    root, out = Path(argv[0]), Path(argv[1])
    stems = [name[:-4] for name in os.listdir(root / "stems") if name.endswith(".yml")]
    out.mkdir(parents=True, exist_ok=True)

    workers = max(1, min(os.cpu_count() or 1, len(stems)))
    with ProcessPoolExecutor(workers) as pool:
        futures = [
            pool.submit(archive_stem, stem, str(root / "csv"), str(out))
            for stem in stems
        ]
        files = sum(future.result() for future in futures)
    print(f"{len(stems)} stems, {files} files")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
