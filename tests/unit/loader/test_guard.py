"""Mass-change guard: limits, force, and the settings it reads."""

from __future__ import annotations

import pickle

import pandas as pd
import pytest

from ghl_memberstack.guard import GuardError, check_guard, guard_limits, measure_impact
from ghl_memberstack.state import AppliedState, Operation, OpKind


def applied_with(count: int) -> AppliedState:
    index = pd.Index([f"C{i}" for i in range(count)], dtype="string", name="contact_id")
    members = pd.DataFrame(
        {"member_id": pd.array([f"mem_{i}" for i in range(count)], dtype="string")}, index=index
    )
    return AppliedState(members=members, records={})


def deactivate(contact_id: str) -> Operation:
    return Operation(
        key=f"member:update:{contact_id}:d",
        kind=OpKind.MEMBER_UPDATE,
        contact_id=contact_id,
        fields={"status": "deleted", "cf:ghl-status": "deleted"},
    )


def delete(contact_id: str) -> Operation:
    return Operation(key=f"member:delete:{contact_id}:m", kind=OpKind.MEMBER_DELETE, contact_id=contact_id)


def clear(contact_id: str) -> Operation:
    return Operation(
        key=f"member:update:{contact_id}:c",
        kind=OpKind.MEMBER_UPDATE,
        contact_id=contact_id,
        fields={"cf:phone": "", "status": "active"},
        cleared=("cf:phone",),
    )


@pytest.mark.parametrize(
    ("members", "operations", "rejected"),
    [
        pytest.param(100, [deactivate(f"C{i}") for i in range(10)], False, id="share-at-limit"),
        pytest.param(100, [deactivate(f"C{i}") for i in range(11)], True, id="share-above-limit"),
        pytest.param(20, [delete(f"C{i}") for i in range(5)], False, id="count-at-limit"),
        pytest.param(20, [delete(f"C{i}") for i in range(6)], True, id="count-and-share-above"),
        pytest.param(1000, [clear(f"C{i}") for i in range(60)], False, id="many-but-small-share"),
        pytest.param(
            40,
            [clear(f"C{i}") for i in range(3)] + [delete(f"C{i}") for i in range(3, 6)],
            True,
            id="kinds-add-up",
        ),
        pytest.param(
            40, [clear("C1"), deactivate("C1"), delete("C1")] * 3, False, id="one-member-counted-once"
        ),
    ],
)
def test_guard_limits(members, operations, rejected):
    applied = applied_with(members)

    if rejected:
        with pytest.raises(GuardError):
            check_guard(operations, applied, max_share=0.10, max_count=5, force=False)
    else:
        check_guard(operations, applied, max_share=0.10, max_count=5, force=False)


def test_guard_message_gives_counts():
    operations = [deactivate("C0"), deactivate("C1"), delete("C2"), delete("C3"), clear("C4"), clear("C5")]

    with pytest.raises(GuardError) as raised:
        check_guard(operations, applied_with(10), max_share=0.10, max_count=5, force=False)

    message = str(raised.value)
    assert "deactivate 2, delete 2 and clear a mapped field of 2 members" in message
    assert "6 of 10 members (60.0%)" in message
    assert "force" in message
    assert raised.value.impact.affected == 6


def test_force_lets_large_plan_through(caplog):
    operations = [delete(f"C{i}") for i in range(10)]

    impact = check_guard(operations, applied_with(10), max_share=0.10, max_count=5, force=True)

    assert impact.deleted == 10
    assert "force" in caplog.text


def test_updates_without_clearing_do_not_count():
    operation = Operation(
        key="member:update:C1:x",
        kind=OpKind.MEMBER_UPDATE,
        contact_id="C1",
        fields={"cf:phone": "+1", "status": "active"},
    )

    assert measure_impact([operation] * 50, applied_with(10)).affected == 0


def test_guard_error_pickles():
    with pytest.raises(GuardError) as raised:
        check_guard(
            [delete(f"C{i}") for i in range(9)], applied_with(9), max_share=0.1, max_count=5, force=False
        )

    copy = pickle.loads(pickle.dumps(raised.value))

    assert str(copy) == str(raised.value)
    assert copy.impact == raised.value.impact


def test_guard_limits_from_environment(monkeypatch):
    monkeypatch.delenv("GHL_MEMBERSTACK_GUARD_MAX_SHARE", raising=False)
    monkeypatch.delenv("GHL_MEMBERSTACK_GUARD_MAX_COUNT", raising=False)
    assert guard_limits() == (0.10, 5)

    monkeypatch.setenv("GHL_MEMBERSTACK_GUARD_MAX_SHARE", "0.25")
    monkeypatch.setenv("GHL_MEMBERSTACK_GUARD_MAX_COUNT", "50")
    assert guard_limits() == (0.25, 50)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("GHL_MEMBERSTACK_GUARD_MAX_SHARE", "1.5", "between 0 and 1"),
        ("GHL_MEMBERSTACK_GUARD_MAX_SHARE", "ten", "number"),
        ("GHL_MEMBERSTACK_GUARD_MAX_COUNT", "-1", "negative"),
        ("GHL_MEMBERSTACK_GUARD_MAX_COUNT", "5.5", "whole number"),
    ],
)
def test_guard_limits_reject_bad_values(monkeypatch, variable, value, message):
    monkeypatch.setenv(variable, value)

    with pytest.raises(ValueError, match=message):
        guard_limits()
