"""Archives past the limits of the classic ZIP format need, and get, ZIP64."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from stemzip.config import RunSettings
from stemzip.executors import SequentialStemExecutor
from stemzip.results import Status
from stemzip.task import zip_by_stem

# the classic format's limits: 32-bit sizes and 16-bit member counts
CLASSIC_MAX_BYTES = 0xFFFFFFFF
CLASSIC_MAX_MEMBERS = 0xFFFF
# the extra field that carries 64-bit sizes, and the record that carries a
# 64-bit member count
ZIP64_EXTRA_ID = 0x0001
ZIP64_END_RECORD = b"PK\x06\x06"


def _zip_one_stem(settings: RunSettings) -> Path:
    (result,) = zip_by_stem(settings, SequentialStemExecutor())
    assert result.status is Status.ZIPPED, result.error
    assert result.zip_file_path is not None
    return Path(result.zip_file_path)


def _extra_ids(extra: bytes) -> list[int]:
    ids = []
    while len(extra) >= 4:
        header, size = struct.unpack("<HH", extra[:4])
        ids.append(header)
        extra = extra[4 + size :]
    return ids


def _unzip_test(path: Path) -> None:
    if shutil.which("unzip") is None:
        return  # Info-ZIP is not installed; zipfile's reading stands alone
    done = subprocess.run(
        ["unzip", "-tq", str(path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No errors detected" in done.stdout


def _crc_of_zeros(size: int) -> int:
    crc, zeros = 0, memoryview(bytes(16 << 20))
    while size:
        step = min(size, len(zeros))
        crc = zlib.crc32(zeros[:step], crc)
        size -= step
    return crc


@pytest.mark.slow
def test_member_over_4_gib(run_tree: Callable[..., RunSettings]) -> None:
    # about 40 s on two cores: a sparse source (no disk used) deflated at the
    # default level, read back by zipfile and by unzip; the archive is ~15 MB
    settings = run_tree(["run1"], {"run1_small.csv": "t,x\n0,1\n"})
    size = CLASSIC_MAX_BYTES + 1 + 12345
    with (settings.data_directory / "run1_big.csv").open("wb") as sparse:
        sparse.truncate(size)

    target = _zip_one_stem(settings)

    with zipfile.ZipFile(target) as archive:
        infos = {info.filename: info for info in archive.infolist()}
        assert list(infos) == ["run1_big.csv", "run1_small.csv"]
        big = infos["run1_big.csv"]
        assert big.file_size == size
        assert big.compress_type == zipfile.ZIP_DEFLATED
        assert ZIP64_EXTRA_ID in _extra_ids(big.extra)
        assert _crc_of_zeros(size) == big.CRC
        assert archive.read("run1_small.csv") == b"t,x\n0,1\n"
        assert archive.testzip() is None  # decompresses all, checks every CRC
    _unzip_test(target)


def test_more_than_65535_members(run_tree: Callable[..., RunSettings]) -> None:
    # hard links give 70,000 real directory entries that cost no data blocks;
    # sixteen distinct contents keep the CRCs apart
    count = CLASSIC_MAX_MEMBERS + 4465
    settings = run_tree(["run1"], {})
    data = settings.data_directory
    seeds = [data / f"seed{i}.txt" for i in range(16)]
    for i, seed in enumerate(seeds):
        seed.write_text(f"{i}," * (i + 1) + "\n")
    names = [f"run1_{i:05d}.csv" for i in range(count)]
    for i, name in enumerate(names):
        os.link(seeds[i % 16], data / name)

    target = _zip_one_stem(settings)

    crcs = [zlib.crc32(seed.read_bytes()) for seed in seeds]
    sizes = [seed.stat().st_size for seed in seeds]
    with zipfile.ZipFile(target) as archive:
        infos = archive.infolist()
        assert [info.filename for info in infos] == names
        assert [info.CRC for info in infos] == [crcs[i % 16] for i in range(count)]
        assert [info.file_size for info in infos] == [
            sizes[i % 16] for i in range(count)
        ]
        assert archive.testzip() is None
    with target.open("rb") as raw:
        raw.seek(-(1 << 16), os.SEEK_END)
        assert ZIP64_END_RECORD in raw.read()
    _unzip_test(target)
