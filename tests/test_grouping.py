from __future__ import annotations

import os
import unicodedata
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stemzip.grouping import (
    NameFilter,
    StemIndex,
    contenders,
    find_stems,
    group_by_stem,
    has_extension,
    list_files,
    owning_stem,
)


@pytest.mark.parametrize(
    ("stems", "name", "expected"),
    [
        pytest.param(["run1", "run10"], "run10_forces.csv", "run10", id="prefix-stem"),
        pytest.param(["run1", "run10"], "run1_forces.csv", "run1", id="short-stem"),
        pytest.param(["run1"], "run10_forces.csv", None, id="no-substring-match"),
        pytest.param(["run1"], "run1.csv", "run1", id="stem-plus-extension"),
        pytest.param(["run1"], "run1-b.csv", "run1", id="dash"),
        pytest.param(["run1"], "run1.b.csv", "run1", id="dot"),
        pytest.param(["run1"], "run1 b.csv", "run1", id="space"),
        pytest.param(["run1", "run1_a"], "run1_a_x.csv", "run1_a", id="longest-wins"),
        pytest.param(["run1", "run1_a"], "run1_b_x.csv", "run1", id="longest-fits"),
        pytest.param(["case.1"], "case.1_out.csv", "case.1", id="dotted-stem"),
        pytest.param(["r[1]"], "r[1]_x.csv", "r[1]", id="brackets-literal"),
        pytest.param(["r[1]"], "r1_x.csv", None, id="brackets-not-glob"),
        pytest.param(["a+b*"], "a+b*_x.csv", "a+b*", id="regex-chars-literal"),
        pytest.param(["a+b"], "aab_x.csv", None, id="plus-not-regex"),
        pytest.param(["Run1"], "run1_x.csv", None, id="case-sensitive"),
        pytest.param(["xrun1"], "run1_x.csv", None, id="not-a-suffix-match"),
        pytest.param(["run1"], "prefix_run1_x.csv", None, id="not-in-middle"),
    ],
)
def test_owning_stem(stems: list[str], name: str, expected: str | None) -> None:
    assert owning_stem(name, frozenset(stems)) == expected


def test_group_by_stem_sorts_and_counts_unmatched() -> None:
    grouping = group_by_stem(
        ["run10", "run1", "run2"],
        ["run10_b.csv", "run1_b.csv", "run1_a.csv", "summary.csv", "run10_a.csv"],
    )

    assert list(grouping.members) == ["run1", "run10", "run2"]
    assert grouping.members == {
        "run1": ["run1_a.csv", "run1_b.csv"],
        "run10": ["run10_a.csv", "run10_b.csv"],
        "run2": [],
    }
    assert grouping.unmatched == ["summary.csv"]


@pytest.mark.parametrize(
    ("name", "extensions", "expected"),
    [
        pytest.param("a.csv", ["csv"], True, id="plain"),
        pytest.param("a.CSV", ["csv"], True, id="any-case"),
        pytest.param("a.csv.bak", ["csv"], False, id="not-final"),
        pytest.param(".csv", ["csv"], False, id="extension-only"),
        pytest.param("a.tar.gz", ["tar.gz"], True, id="two-part"),
        pytest.param("acsv", ["csv"], False, id="no-dot"),
    ],
)
def test_has_extension(name: str, extensions: list[str], expected: bool) -> None:
    assert has_extension(name, extensions) is expected


def test_find_stems_strips_final_extension_and_filters(tmp_path: Path) -> None:
    for name in [
        "case.1.yml",
        "run_a.yml",
        "run_b.yml",
        "run_b_draft.yml",
        "notes.txt",
        "other.yaml",
    ]:
        (tmp_path / name).write_text("x")

    every = ["case.1", "run_a", "run_b", "run_b_draft"]
    assert find_stems(tmp_path, ["yml"]) == (every, every)
    assert find_stems(tmp_path, ["yml", "yaml"], NameFilter(contains=("run",))) == (
        ["run_a", "run_b", "run_b_draft"],
        sorted([*every, "other"]),
    )
    selected, _ = find_stems(
        tmp_path, ["yml"], NameFilter(contains=("run", "_b"), not_contains=("draft",))
    )
    assert selected == ["run_b"]


def test_same_stem_from_two_extensions_counts_once(tmp_path: Path) -> None:
    (tmp_path / "run1.yml").write_text("x")
    (tmp_path / "run1.yaml").write_text("x")

    assert find_stems(tmp_path, ["yml", "yaml"]) == (["run1"], ["run1"])


def test_listing_skips_folders_and_fifos(tmp_path: Path) -> None:
    (tmp_path / "run1_a.csv").write_text("x")
    (tmp_path / "run1_dir.csv").mkdir()
    os.mkfifo(tmp_path / "run1_pipe.csv")
    (tmp_path / "run1_link.csv").symlink_to(tmp_path / "run1_a.csv")

    assert list_files(tmp_path, ["csv"]) == ["run1_a.csv", "run1_link.csv"]


@pytest.mark.parametrize(
    ("name_filter", "expected"),
    [
        pytest.param(
            NameFilter(), ["a_1.csv", "a_2.csv", "b_1.csv", "b_tmp.csv"], id="all"
        ),
        pytest.param(
            NameFilter(contains=("_1",)), ["a_1.csv", "b_1.csv"], id="contains"
        ),
        pytest.param(
            NameFilter(not_contains=("tmp", "a_")), ["b_1.csv"], id="not-contains"
        ),
        pytest.param(
            NameFilter(include=("a_*",)), ["a_1.csv", "a_2.csv"], id="include"
        ),
        pytest.param(
            NameFilter(include=("a_*", "*tmp*"), exclude=("*_2.*",)),
            ["a_1.csv", "b_tmp.csv"],
            id="include-exclude",
        ),
        pytest.param(NameFilter(include=("A_*",)), [], id="globs-case-sensitive"),
        pytest.param(
            NameFilter(include=("[ab]_1.csv",)), ["a_1.csv", "b_1.csv"], id="set"
        ),
    ],
)
def test_data_filters(
    tmp_path: Path, name_filter: NameFilter, expected: list[str]
) -> None:
    for name in ["a_1.csv", "a_2.csv", "b_1.csv", "b_tmp.csv"]:
        (tmp_path / name).write_text("x")

    assert list_files(tmp_path, ["csv"], name_filter) == expected


def test_recursive_listing_gives_relative_paths_and_skips_output(
    tmp_path: Path,
) -> None:
    for name in [
        "run1_a.csv",
        "Jacket/run1_b.csv",
        "Jacket/deep/run2_c.csv",
        "zips/x.csv",
    ]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    (tmp_path / "linked").symlink_to(tmp_path / "Jacket")

    flat = list_files(tmp_path, ["csv"])
    deep = list_files(tmp_path, ["csv"], recursive=True, skip={tmp_path / "zips"})

    assert flat == ["run1_a.csv"]
    assert deep == ["Jacket/deep/run2_c.csv", "Jacket/run1_b.csv", "run1_a.csv"]
    grouping = group_by_stem(["run1", "run2"], deep)
    assert grouping.members == {
        "run1": ["Jacket/run1_b.csv", "run1_a.csv"],
        "run2": ["Jacket/deep/run2_c.csv"],
    }


def test_contenders_lists_every_fitting_stem_longest_first() -> None:
    stems = frozenset({"run1", "run1_a", "run1_a_b", "run10"})

    assert contenders("x/run1_a_b_c.csv", stems) == ["run1_a_b", "run1_a", "run1"]
    assert contenders("run10_c.csv", stems) == ["run10"]


# letters with accents, precomposed and as combining marks; the angstrom
# sign, whose composed form is another character (Å); a byte that is not UTF-8
_name_chars = st.sampled_from("ab1_-.e\u00e9\u0301A\u00c5\u030a\u212b\udce9")


def _spellings(max_size: int) -> st.SearchStrategy[str]:
    """Names as Linux (as typed) or macOS (decomposed) might write them."""
    return st.builds(
        lambda text, form: text if form is None else unicodedata.normalize(form, text),
        st.text(_name_chars, min_size=1, max_size=max_size),
        st.sampled_from([None, "NFC", "NFD"]),
    )


def _fits(stem: str, name: str) -> bool:
    # the rule as the README states it, in composed form; a combining mark
    # that stays one, or a byte that is not UTF-8, is never a separator
    stem, name = unicodedata.normalize("NFC", stem), unicodedata.normalize("NFC", name)
    return (
        name.startswith(stem)
        and len(name) > len(stem)
        and not name[len(stem)].isalnum()
        and not unicodedata.category(name[len(stem)]).startswith(("M", "Cs"))
    )


@given(
    stems=st.sets(_spellings(5), max_size=6), names=st.sets(_spellings(9), max_size=20)
)
def test_every_file_lands_once_in_its_longest_stem(
    stems: set[str], names: set[str]
) -> None:
    _check_grouping(stems, names)


_words = st.text(_name_chars, min_size=1, max_size=4)
_separators = st.sampled_from(["_", "-", ".", " ", "\u0301", "1", "a"])


@st.composite
def _nested_campaigns(draw: st.DrawFn) -> tuple[set[str], set[str]]:
    """Stems that extend each other (a, a_b, a_b-c) and names built on them."""
    stems = set(draw(st.lists(_words, min_size=1, max_size=3)))
    for _ in range(draw(st.integers(0, 5))):
        base = draw(st.sampled_from(sorted(stems)))
        stems.add(base + draw(_separators) + draw(_words))
    names = set()
    for _ in range(draw(st.integers(1, 15))):
        base = draw(st.sampled_from(sorted(stems)))
        names.add(base + draw(_separators) + draw(_words) + ".csv")
    return stems, names


@given(campaign=_nested_campaigns())
def test_names_built_on_nested_stems_go_to_the_longest(
    campaign: tuple[set[str], set[str]],
) -> None:
    # random names rarely fit two stems at once; these are made to
    _check_grouping(*campaign)


def _check_grouping(stems: set[str], names: set[str]) -> None:
    grouping = group_by_stem(stems, names)

    placed = [name for members in grouping.members.values() for name in members]
    assert sorted(placed + grouping.unmatched) == sorted(names)
    composed_length = {s: len(unicodedata.normalize("NFC", s)) for s in stems}
    for stem, members in grouping.members.items():
        for name in members:
            fitting = [s for s in stems if _fits(s, name)]
            assert stem in fitting
            assert composed_length[stem] == max(composed_length[s] for s in fitting)
    for name in grouping.unmatched:
        assert not any(_fits(s, name) for s in stems)
    forms = Counter(unicodedata.normalize("NFC", s) for s in stems)
    assert set(StemIndex(stems).twins()) == {
        s for s in stems if forms[unicodedata.normalize("NFC", s)] > 1
    }


def test_link_loop_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "run1_a.csv").write_text("x")
    (tmp_path / "run1_loop.csv").symlink_to(tmp_path / "run1_loop.csv")

    assert list_files(tmp_path, ["csv"]) == ["run1_a.csv"]
    assert "skipping" in caplog.text and "run1_loop.csv" in caplog.text


def test_combining_mark_is_part_of_the_letter_before_it() -> None:
    decomposed = unicodedata.normalize("NFD", "café_x.csv")

    assert owning_stem(decomposed, frozenset({"caf"})) is None
    assert owning_stem(decomposed, frozenset({"cafe"})) is None
    assert owning_stem(decomposed, frozenset({decomposed[:5]})) == decomposed[:5]
