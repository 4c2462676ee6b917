"""Loading and validating the mapping file."""

from __future__ import annotations

import textwrap

import pytest

from ghl_memberstack.mapping import DEFAULT_MAPPING_PATH, Mapping, MappingError, load_mapping


def write(tmp_path, text: str):
    path = tmp_path / "mapping.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_error(tmp_path, text: str) -> MappingError:
    path = write(tmp_path, text)
    with pytest.raises(MappingError) as caught:
        load_mapping(path)
    assert str(path) in str(caught.value)
    return caught.value


def test_default_file_values():
    mapping = load_mapping()

    assert mapping.source == str(DEFAULT_MAPPING_PATH)
    assert mapping.custom_fields == {"contact.membership_tier": "membership-tier"}
    assert mapping.tag_plans == {"vip": "pln_vip-free", "member": "pln_members-free"}
    assert mapping.default_region == "US"
    assert mapping.delete_policy == "deactivate"
    assert mapping.table_entities == ("tasks", "notes", "appointments")
    assert mapping.json_entities == ()


def test_default_file_path_is_include():
    assert DEFAULT_MAPPING_PATH.parent.name == "include"
    assert DEFAULT_MAPPING_PATH.is_file()


def test_absent_keys_take_defaults(tmp_path):
    mapping = load_mapping(write(tmp_path, "delete_policy: delete\n"))

    assert mapping.delete_policy == "delete"
    assert mapping.custom_fields == {}
    assert mapping.tag_plans == {}
    assert mapping.managed_plans == ()
    assert mapping.target("notes") == "data_table"


def test_empty_mapping_object_is_all_defaults(tmp_path):
    assert load_mapping(write(tmp_path, "{}")).model_dump() == Mapping().model_dump()


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n"])
def test_empty_file_is_rejected(tmp_path, text):
    with pytest.raises(MappingError, match="the file is empty"):
        load_mapping(write(tmp_path, text))


def test_properties(tmp_path):
    mapping = load_mapping(
        write(
            tmp_path,
            """
            custom_fields: {contact.tier: tier, contact.city: city}
            tag_plans: {gold: pln_b, silver: pln_a, platinum: pln_b}
            entities: {notes: json, appointments: json}
            """,
        )
    )

    assert mapping.member_fields == (
        "first-name",
        "last-name",
        "phone",
        "ghl-tags",
        "ghl-status",
        "tier",
        "city",
    )
    assert mapping.managed_plans == ("pln_a", "pln_b")
    assert mapping.json_entities == ("notes", "appointments")
    assert mapping.table_entities == ("tasks",)


def test_tag_keys_normalised(tmp_path):
    mapping = load_mapping(write(tmp_path, 'tag_plans: {"  VIP   Gold ": pln_gold}\n'))

    assert mapping.tag_plans == {"vip gold": "pln_gold"}


def test_region_upper_cased(tmp_path):
    assert load_mapping(write(tmp_path, "default_region: gb\n")).default_region == "GB"


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("tag_plans: {vip: prc_vip-monthly}\n", "tag_plans.vip", "price id of a paid plan"),
        ("tag_plans: {vip: vip-free}\n", "tag_plans.vip", "not a Memberstack plan id"),
        ("tag_plans: {vip: pln_}\n", "tag_plans.vip", "not a Memberstack plan id"),
        ("tag_plans: {vip: 12}\n", "tag_plans.vip", "valid string"),
        ('tag_plans: {"a,b": pln_ab}\n', "tag_plans.a,b", "cannot contain a comma"),
        ('tag_plans: {"  ": pln_x}\n', "tag_plans.  ", "cannot be empty"),
        ("tag_plans: {vip: pln_a, ' VIP': pln_b}\n", "tag_plans", "same tag after normalisation"),
        ("tag_plans: [vip]\n", "tag_plans", "valid dictionary"),
        ("custom_fields: {contact.x: phone}\n", "custom_fields", "always writes itself"),
        ("custom_fields: {contact.x: tier, contact.y: tier}\n", "custom_fields", "both map to 'tier'"),
        ('custom_fields: {"contact x": tier}\n', "custom_fields.contact x", "without whitespace"),
        ("custom_fields: {contact.x: ''}\n", "custom_fields.contact.x", "non-empty"),
        ("delete_policy: purge\n", "delete_policy", "'deactivate', 'delete' or 'ignore'"),
        ("default_region: XX\n", "default_region", "not a region"),
        ("entities: {tasks: csv}\n", "entities.tasks", "'data_table' or 'json'"),
        ("entities: {opportunities: json}\n", "entities.opportunities", "unknown key; expected one of tasks"),
        ("tag_plan: {vip: pln_a}\n", "tag_plan", "unknown key; expected one of custom_fields"),
    ],
)
def test_invalid_key_named(tmp_path, text, key, problem):
    error = load_error(tmp_path, text)

    assert error.key == key
    assert problem in error.problem
    assert f"key '{key}'" in str(error)


def test_several_problems_listed(tmp_path):
    error = load_error(tmp_path, "delete_policy: purge\ndefault_region: XX\n")

    assert error.key == "default_region"
    assert "more problems at 'delete_policy'" in error.problem


def test_yaml_syntax_error_line(tmp_path):
    error = load_error(tmp_path, "tag_plans:\n  vip: [pln_a\n")

    assert error.key is None
    assert "invalid YAML at line" in error.problem


def test_duplicate_yaml_key_rejected(tmp_path):
    error = load_error(tmp_path, "tag_plans:\n  vip: pln_a\n  vip: pln_b\n")

    assert "duplicate key 'vip'" in error.problem
    assert "line 3" in error.problem


def test_top_level_list_rejected(tmp_path):
    error = load_error(tmp_path, "- vip\n")

    assert "expected a YAML mapping" in error.problem


def test_missing_file(tmp_path):
    path = tmp_path / "absent.yaml"

    with pytest.raises(MappingError, match="absent.yaml: file not found"):
        load_mapping(path)


def test_mapping_error_is_value_error():
    assert issubclass(MappingError, ValueError)
