"""Contact search paging over 25,000 contacts, many of which share one dateUpdated.

A cursor that compares dateUpdated alone would skip or repeat contacts where equal timestamps
straddle a page boundary. ``searchAfter`` is ``[dateUpdated in ms, id]``, so ties break by id and
each contact comes back exactly once. Page mode stops at 10,000 results.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from sandbox import seedgen
from sandbox.testing import running_sandbox

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONTACT_COUNT = 25_000
PAGE_LIMIT = 500
PAGE_MODE_MAX_RESULTS = 10_000



def _epoch_ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


@pytest.fixture(scope="module")
def seed() -> dict[str, Any]:
    # Generated here rather than at import, so collecting the suite stays fast.
    return seedgen.generate_seed(
        contacts_per_location=(CONTACT_COUNT,),
        tasks=0,
        notes=0,
        appointments=0,
        same_date_updated_share=0.6,
        same_date_updated_values=3,
        random_seed=3,
    )


@pytest.fixture(scope="module")
def contacts(seed: dict[str, Any]) -> list[dict[str, Any]]:
    return seed["ghl"]["locations"][0]["contacts"]


@pytest.fixture(scope="module")
def ghl(seed: dict[str, Any]) -> Iterator[httpx.Client]:
    with running_sandbox(seed=seed) as sb:
        sb.set_config("ghl", rate_limits=False, latency_ms=0, search_lag_ms=0)
        headers = {"Authorization": f"Bearer {seedgen.DEMO_LOCATION_A_PIT}", "Version": "2021-07-28"}
        with httpx.Client(base_url=sb.ghl_url, headers=headers, timeout=60, trust_env=False) as client:
            yield client


def _search(client: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    return client.post("/contacts/search", json={"locationId": seedgen.DEMO_LOCATION_A_ID, **body})


def _page_with_search_after(client: httpx.Client, sort: list[dict[str, str]],
                            filters: list[dict[str, Any]] | None = None) -> list[list[dict[str, Any]]]:
    body: dict[str, Any] = {"pageLimit": PAGE_LIMIT, "sort": sort}
    if filters:
        body["filters"] = filters
    pages = []
    while True:
        response = _search(client, body)
        assert response.status_code == 200, response.text
        contacts = response.json()["contacts"]
        pages.append(contacts)
        if len(contacts) < PAGE_LIMIT:
            return pages
        body["searchAfter"] = contacts[-1]["searchAfter"]


def test_seed_has_ties_across_pages(contacts: list[dict[str, Any]]) -> None:
    # The paging checks below are only meaningful if many contacts share one dateUpdated.
    largest_tie = Counter(contact["dateUpdated"] for contact in contacts).most_common(1)[0][1]

    assert largest_tie > 2 * PAGE_LIMIT


def test_search_after_returns_each_contact_once(ghl: httpx.Client,
                                                contacts: list[dict[str, Any]]) -> None:
    pages = _page_with_search_after(ghl, [{"field": "dateUpdated", "direction": "asc"}])
    returned = [contact for page in pages for contact in page]
    ids = [contact["id"] for contact in returned]

    assert len(ids) == CONTACT_COUNT
    assert Counter(ids).most_common(1)[0][1] == 1
    assert set(ids) == {contact["id"] for contact in contacts}
    keys = [(_epoch_ms(contact["dateUpdated"]), contact["id"]) for contact in returned]
    assert keys == sorted(keys)
    ties_at_boundaries = sum(
        1 for before, after in zip(pages, pages[1:])
        if after and before[-1]["dateUpdated"] == after[0]["dateUpdated"]
    )
    assert ties_at_boundaries >= 10


def test_search_after_descending_date_added(ghl: httpx.Client,
                                            contacts: list[dict[str, Any]]) -> None:
    pages = _page_with_search_after(ghl, [{"field": "dateAdded", "direction": "desc"}])
    ids = [contact["id"] for page in pages for contact in page]

    assert len(ids) == CONTACT_COUNT
    assert set(ids) == {contact["id"] for contact in contacts}
    added = [_epoch_ms(contact["dateAdded"]) for page in pages for contact in page]
    assert added == sorted(added, reverse=True)


def test_search_after_with_updated_range(ghl: httpx.Client, contacts: list[dict[str, Any]]) -> None:
    # An incremental extract: everything updated at or after the oldest shared instant.
    shared_instants = Counter(contact["dateUpdated"] for contact in contacts).most_common(3)
    since_ms = min(_epoch_ms(iso) for iso, _ in shared_instants)
    expected = {contact["id"] for contact in contacts if _epoch_ms(contact["dateUpdated"]) >= since_ms}
    filters = [{"field": "dateUpdated", "operator": "range", "value": {"gte": since_ms}}]

    pages = _page_with_search_after(ghl, [{"field": "dateUpdated", "direction": "asc"}], filters)
    ids = [contact["id"] for page in pages for contact in page]

    assert len(ids) == len(expected)
    assert set(ids) == expected


def test_page_mode_stops_at_ten_thousand(ghl: httpx.Client, contacts: list[dict[str, Any]]) -> None:
    sort = [{"field": "dateUpdated", "direction": "asc"}]
    last_page = PAGE_MODE_MAX_RESULTS // PAGE_LIMIT
    ordered = sorted(contacts, key=lambda contact: (_epoch_ms(contact["dateUpdated"]), contact["id"]))

    allowed = _search(ghl, {"pageLimit": PAGE_LIMIT, "page": last_page, "sort": sort})
    rejected = _search(ghl, {"pageLimit": PAGE_LIMIT, "page": last_page + 1, "sort": sort})

    assert allowed.status_code == 200, allowed.text
    expected_ids = [contact["id"] for contact in ordered[PAGE_MODE_MAX_RESULTS - PAGE_LIMIT:
                                                          PAGE_MODE_MAX_RESULTS]]
    assert [contact["id"] for contact in allowed.json()["contacts"]] == expected_ids
    assert rejected.status_code == 422
    assert isinstance(rejected.json()["message"], list)


def test_page_limit_above_maximum(ghl: httpx.Client) -> None:
    response = _search(ghl, {"pageLimit": PAGE_LIMIT + 1})

    assert response.status_code == 422
