"""Sync pair files: validation messages, the Variable override and pair selection."""

from __future__ import annotations

from pathlib import Path

import pytest

from ghl_memberstack import pairs
from ghl_memberstack.pairs import PairsError, SyncPair

INCLUDE = Path(pairs.__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "mapping.yaml").write_text("# stand-in\n", encoding="utf-8")
    path = tmp_path / "pairs.yaml"
    path.write_text(text, encoding="utf-8")
    return path


ENTRY = """
  - name: {name}
    gohighlevel_conn_id: {ghl}
    memberstack_conn_id: {ms}
    mapping: mapping.yaml
"""


def entry(name: str = "a", ghl: str = "ghl_a", ms: str = "ms_a") -> str:
    return ENTRY.format(name=name, ghl=ghl, ms=ms)


def test_default_file_has_one_default_pair() -> None:
    loaded = pairs.load_pairs(pairs.DEFAULT_PAIRS_FILE)
    assert [p.name for p in loaded] == ["default"]
    assert loaded[0].gohighlevel_conn_id == "gohighlevel_default"
    assert loaded[0].memberstack_conn_id == "memberstack_default"
    assert loaded[0].mapping == str(INCLUDE / "mapping.yaml")


def test_demo_file_has_a_pair_per_location() -> None:
    loaded = pairs.load_pairs(INCLUDE / "sync_pairs.demo.yaml")
    assert [(p.name, p.gohighlevel_conn_id, p.memberstack_conn_id) for p in loaded] == [
        ("demo_a", "gohighlevel_demo_a", "memberstack_demo_a"),
        ("demo_b", "gohighlevel_demo_b", "memberstack_demo_b"),
    ]


def test_mapping_path_resolves_against_pairs_file(tmp_path: Path) -> None:
    loaded = pairs.load_pairs(write(tmp_path, "pairs:" + entry()))
    assert loaded[0].mapping == str((tmp_path / "mapping.yaml").resolve())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("pairs: [", "invalid YAML", id="yaml"),
        pytest.param("other: 1", "single key 'pairs'", id="top-level"),
        pytest.param("pairs: []", "non-empty list", id="empty"),
        pytest.param("pairs:\n  - just-a-string", "pairs[0]: expected a mapping", id="entry-type"),
        pytest.param("pairs:" + entry() + "    extra: 1\n", "unknown keys ['extra']", id="unknown-key"),
        pytest.param("pairs:\n  - name: a\n", "missing keys", id="missing-key"),
        pytest.param("pairs:" + entry(name="bad name"), "pairs[0].name: invalid name", id="name"),
        pytest.param("pairs:" + entry(ghl="bad id!"), "gohighlevel_conn_id: invalid connection id", id="conn"),
        pytest.param("pairs:" + entry() + entry(ghl="ghl_b"), "appears more than once", id="duplicate-name"),
        pytest.param("pairs:" + entry() + entry(name="b"), "both sync", id="duplicate-route"),
    ],
)
def test_invalid_pairs_file_is_rejected(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PairsError) as error:
        pairs.load_pairs(path)
    assert message in str(error.value)
    assert str(path) in str(error.value)


def test_missing_mapping_file_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "pairs:" + entry().replace("mapping.yaml", "nope.yaml"))
    with pytest.raises(PairsError, match="pairs\\[0\\].mapping: mapping file .*nope.yaml.* not found"):
        pairs.load_pairs(path)


def test_missing_pairs_file_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(PairsError, match="sync pairs file not found"):
        pairs.load_pairs(tmp_path / "absent.yaml")


def test_variable_value_picks_the_file(tmp_path: Path) -> None:
    assert pairs.resolve_pairs_path(None) == pairs.DEFAULT_PAIRS_FILE
    assert pairs.resolve_pairs_path("  ") == pairs.DEFAULT_PAIRS_FILE
    assert pairs.resolve_pairs_path("sync_pairs.demo.yaml") == INCLUDE / "sync_pairs.demo.yaml"
    assert pairs.resolve_pairs_path(str(tmp_path / "x.yaml")) == tmp_path / "x.yaml"


def test_select_pairs_keeps_file_order() -> None:
    loaded = [SyncPair(n, f"g{n}", f"m{n}", "/m.yaml") for n in ("a", "b", "c")]
    assert [p.name for p in pairs.select_pairs(loaded, [])] == ["a", "b", "c"]
    assert [p.name for p in pairs.select_pairs(loaded, None)] == ["a", "b", "c"]
    assert [p.name for p in pairs.select_pairs(loaded, ["c", "a"])] == ["a", "c"]


def test_select_pairs_rejects_unknown_names() -> None:
    loaded = [SyncPair("a", "g", "m", "/m.yaml")]
    with pytest.raises(PairsError, match=r"unknown sync pairs \['zz'\].*known pairs are \['a'\]"):
        pairs.select_pairs(loaded, ["a", "zz"])


def test_pair_round_trips_through_dict() -> None:
    pair = SyncPair("a", "g", "m", "/m.yaml")
    assert SyncPair.from_dict(pair.to_dict()) == pair
