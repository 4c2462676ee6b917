"""Unit tests of the sandbox machinery: clock, config, faults, windows, routing and seed checks."""

from __future__ import annotations

import copy
import json

import pytest

from sandbox.core import (
    DEFAULT_CONFIG,
    FAULT_KINDS,
    Clock,
    ConfigError,
    FaultInjector,
    Router,
    format_iso,
    parse_iso_ms,
    scaled_limit,
    validate_config,
)
from sandbox.limits import BinnedSlidingWindow, SlidingWindow
from sandbox.seeding import EXAMPLE_SEED_PATH, SeedError, load_seed_file, validate_seed


def test_clock_advance_moves_time() -> None:
    clock = Clock()
    clock.set_frozen(True)
    start = clock.now()
    clock.advance(90)
    assert clock.now() == pytest.approx(start + 90)


def test_clock_rejects_negative_advance() -> None:
    with pytest.raises(ValueError, match="advance_s"):
        Clock().advance(-1)


def test_clock_freeze_keeps_time() -> None:
    clock = Clock()
    clock.set_frozen(True)
    frozen = clock.now()
    assert clock.now() == frozen
    clock.set_frozen(False)
    assert clock.now() >= frozen


def test_iso_round_trip() -> None:
    assert format_iso(1709284500.123) == "2024-03-01T09:15:00.123Z"
    assert parse_iso_ms("2024-03-01T09:15:00.123Z") == 1709284500123
    assert parse_iso_ms("2021-07-16 11:00:00") == parse_iso_ms("2021-07-16T11:00:00Z")
    assert parse_iso_ms("2024-03-01T10:15:00+01:00") == parse_iso_ms("2024-03-01T09:15:00Z")


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"nope": 1}, "unknown config key 'nope'"),
        ({"rate_limits": "yes"}, "must be true or false"),
        ({"ghl_burst_limit": 0}, "must be >= 1"),
        ({"ghl_burst_limit": 1.5}, "whole number"),
        ({"rate_limit_scale": 0}, "must be > 0"),
        ({"faults": {"418": 0.1}}, "unknown fault kind"),
        ({"faults": {"500": 0.7, "502": 0.7}}, "add up to at most 1"),
        ({"faults": {"500": 2}}, "at most 1"),
        ([], "JSON object"),
    ],
)
def test_config_rejects_invalid(update: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_config(update)


def test_config_accepts_every_default() -> None:
    assert validate_config(copy.deepcopy(DEFAULT_CONFIG)) == DEFAULT_CONFIG


def test_scaled_limit_never_below_one() -> None:
    assert scaled_limit(100, 10) == 1000
    assert scaled_limit(25, 0.001) == 1


def test_faults_reproducible_from_seed() -> None:
    faults = {"500": 0.2, "reset": 0.1, "timeout_after": 0.1}
    first = FaultInjector(42)
    second = FaultInjector(42)
    other = FaultInjector(43)
    sequence = [first.draw(faults, FAULT_KINDS) for _ in range(200)]
    assert sequence == [second.draw(faults, FAULT_KINDS) for _ in range(200)]
    assert sequence != [other.draw(faults, FAULT_KINDS) for _ in range(200)]
    assert {"500", "reset", "timeout_after", None} == set(sequence)


def test_faults_skip_disallowed_kinds() -> None:
    faults = {"timeout_after": 1.0}
    injector = FaultInjector(1)
    assert injector.draw(faults, ("500",)) is None
    assert injector.draw(faults, FAULT_KINDS) == "timeout_after"


def test_sliding_window_slides() -> None:
    window = SlidingWindow(10.0)
    for second in range(5):
        window.add(100.0 + second)
    assert window.count(104.5) == 5
    assert window.count(111.5) == 3
    assert window.count(120.0) == 0


def test_binned_window_counts_per_second() -> None:
    window = BinnedSlidingWindow(86_400.0)
    window.add(1000.2)
    window.add(1000.7)
    window.add(5000.0)
    assert window.count(5000.0) == 3
    assert window.count(1000.0 + 86_400 + 1) == 1


def test_router_matches_templates() -> None:
    router = Router()
    router.add("POST", "/contacts/search", lambda call: "search")
    router.add("GET", "/contacts/", lambda call: "list", aliases=("/contacts",))
    router.add("GET", "/members/{id}", lambda call: "member")
    search_route, _ = router.match("POST", "/contacts/search")
    alias_route, _ = router.match("GET", "/contacts")
    member_route, params = router.match("GET", "/members/jo%2Bx%40example.com")
    assert search_route.key == "POST /contacts/search"
    assert alias_route.key == "GET /contacts/"
    assert member_route.key == "GET /members/{id}"
    assert params == {"id": "jo+x@example.com"}
    assert router.match("DELETE", "/contacts/search") is None


def test_example_seed_is_valid() -> None:
    seed = load_seed_file(EXAMPLE_SEED_PATH)
    assert {location["id"] for location in seed["ghl"]["locations"]} == {
        "DemoLocationPit00001", "DemoLocationOAuth001"}


def test_seed_error_names_the_path() -> None:
    seed = json.loads(EXAMPLE_SEED_PATH.read_text(encoding="utf-8"))
    seed["ghl"]["locations"][0]["contacts"][1]["tags"] = [7]
    with pytest.raises(SeedError, match=r"ghl\.locations\[0\]\.contacts\[1\]\.tags\[0\]"):
        validate_seed(seed)


def test_seed_error_in_long_arrays() -> None:
    seed = json.loads(EXAMPLE_SEED_PATH.read_text(encoding="utf-8"))
    contacts = seed["ghl"]["locations"][0]["contacts"]
    contacts.extend({"id": f"Extra{i:015d}"} for i in range(40))
    contacts[35]["id"] = ""
    with pytest.raises(SeedError, match=r"contacts\[35\]\.id"):
        validate_seed(seed)


def test_seed_rejects_unknown_top_level_key() -> None:
    with pytest.raises(SeedError, match="Additional properties"):
        validate_seed({"ghl": {"locations": []}, "extra": {}})


def test_seed_file_errors_are_clear(tmp_path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(SeedError, match="not valid JSON"):
        load_seed_file(broken)
    with pytest.raises(SeedError, match="cannot read seed file"):
        load_seed_file(tmp_path / "missing.json")
