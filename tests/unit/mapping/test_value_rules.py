"""Normalisation of emails, phones, tags and custom field values."""

from __future__ import annotations

import pytest

from ghl_memberstack.mapping import (
    canonical_email,
    custom_field_text,
    is_valid_email,
    mask_email,
    normalize_phone,
    normalize_tag,
    normalize_tags,
    phone_region,
    tag_set,
)


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        (["VIP", " vip ", "Vip"], "vip"),
        (["  New   Customer  ", "new customer"], "new customer"),
        (["a, b", "B", ",,c,"], "a,b,c"),
        (["zeta", "Alpha", "Ärger", "beta"], "alpha,beta,zeta,ärger"),
        (["Straße", "STRASSE"], "strasse"),
        (["tab\tand\nnewline"], "tab and newline"),
        ([], ""),
        (None, ""),
        ("vip, member", "member,vip"),
    ],
)
def test_normalize_tags(tags, expected):
    assert normalize_tags(tags) == expected


def test_tag_set_and_single_tag():
    assert tag_set(["VIP, Member"]) == {"vip", "member"}
    assert normalize_tag("  Gold   Star ") == "gold star"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Ada@Example.ORG ", "ada@example.org"),
        ("ada@example.org", "ada@example.org"),
        ("   ", None),
        ("", None),
        (None, None),
        (42, None),
    ],
)
def test_canonical_email(raw, expected):
    assert canonical_email(raw) == expected


@pytest.mark.parametrize(
    ("email", "valid"),
    [
        ("ada@example.org", True),
        ("ada.byron+sync@mail.example.co.uk", True),
        ("zoë@exämple.org", True),
        ("ada@nonexistent-domain-without-dns.example", True),
        ("ada@", False),
        ("@example.org", False),
        ("ada example@example.org", False),
        ("ada@@example.org", False),
        ("ada..byron@example.org", False),
        ("ada@localhost", False),
        ("ada@site.test", False),
        ("Ada <ada@example.org>", False),
    ],
)
def test_is_valid_email(email, valid):
    assert is_valid_email(email) is valid


@pytest.mark.parametrize(
    ("email", "masked"),
    [
        ("ada@example.org", "a***@example.org"),
        (" bob.smith@mail.example.com ", "b***@mail.example.com"),
        ("no-at-sign", "***"),
        ("@example.org", "***"),
        (None, "***"),
    ],
)
def test_mask_email(email, masked):
    assert mask_email(email) == masked


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("+1 (555) 555-0123", "US", ("+15555550123", True)),
        ("(555) 555-0123", "US", ("+15555550123", True)),
        ("555.555.0123", "US", ("+15555550123", True)),
        ("020 7946 0958", "GB", ("+442079460958", True)),
        ("0044 20 7946 0958", "US", ("+442079460958", True)),
        ("+44 (0)20-7946-0958", "US", ("+442079460958", True)),
        ("  not a phone ", "US", ("not a phone", False)),
        ("12", "US", ("12", False)),
        ("   ", "US", ("", True)),
        (None, "US", ("", True)),
    ],
)
def test_normalize_phone(raw, region, expected):
    assert normalize_phone(raw, region) == expected


@pytest.mark.parametrize(
    ("country", "expected"),
    [("GB", "GB"), (" gb ", "GB"), ("United Kingdom", "US"), (None, "US"), ("", "US"), ("ZZ", "US")],
)
def test_phone_region(country, expected):
    assert phone_region(country, "US") == expected


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("Gold", "Gold"),
        (["Gold", "Silver"], "Gold,Silver"),
        (["a", None, 3], "a,3"),
        (3, "3"),
        (3.0, "3"),
        (2.5, "2.5"),
        (-0.125, "-0.125"),
        (True, "true"),
        (False, "false"),
        (None, ""),
        ([], ""),
        (
            {"url": "https://files.example.org/a.pdf", "name": "a.pdf"},
            '{"name":"a.pdf","url":"https://files.example.org/a.pdf"}',
        ),
    ],
)
def test_custom_field_text(value, text):
    assert custom_field_text(value) == text
