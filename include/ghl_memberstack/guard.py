"""Mass-change guard: reject a plan that would deactivate, delete or blank many members at once.

A plan is rejected when the members it would deactivate, delete or clear a mapped custom field of
are more than ``max_share`` of the applied members and also more than ``max_count``. Both limits
come from ``GHL_MEMBERSTACK_GUARD_MAX_SHARE`` (default 0.10) and ``GHL_MEMBERSTACK_GUARD_MAX_COUNT``
(default 5), and ``force`` lets such a plan through.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable

from ghl_memberstack.diff import CUSTOM_FIELD_PREFIX, is_deactivation
from ghl_memberstack.state import AppliedState, Operation, OpKind

log = logging.getLogger(__name__)

MAX_SHARE_ENV = "GHL_MEMBERSTACK_GUARD_MAX_SHARE"
MAX_COUNT_ENV = "GHL_MEMBERSTACK_GUARD_MAX_COUNT"
DEFAULT_MAX_SHARE = 0.10
DEFAULT_MAX_COUNT = 5


class GuardError(Exception):
    """The plan would change more members at once than the guard allows; rerun with force to apply it."""

    # The impact is optional only so that the error survives pickling, which Airflow does.
    def __init__(self, message: str, *, impact: GuardImpact | None = None) -> None:
        super().__init__(message)
        self.impact = impact


@dataclasses.dataclass(frozen=True)
class GuardImpact:
    """Members a plan would deactivate, delete or clear a mapped field of, out of ``total``."""

    deactivated: int
    deleted: int
    cleared: int
    affected: int
    total: int

    @property
    def share(self) -> float:
        """Affected members as a share of the applied members (1.0 when there are none)."""
        return self.affected / self.total if self.total else float(self.affected > 0)


def guard_limits() -> tuple[float, int]:
    """Read the guard's maximum share and maximum count of affected members from the environment.

    :raises ValueError: a variable is not a number, or the share is outside 0..1.
    """
    share_text = os.environ.get(MAX_SHARE_ENV, "").strip()
    count_text = os.environ.get(MAX_COUNT_ENV, "").strip()
    try:
        share = float(share_text) if share_text else DEFAULT_MAX_SHARE
    except ValueError:
        raise ValueError(f"{MAX_SHARE_ENV} must be a number between 0 and 1, got {share_text!r}.") from None
    try:
        count = int(count_text) if count_text else DEFAULT_MAX_COUNT
    except ValueError:
        raise ValueError(f"{MAX_COUNT_ENV} must be a whole number, got {count_text!r}.") from None
    if not 0 <= share <= 1:
        raise ValueError(f"{MAX_SHARE_ENV} must be between 0 and 1, got {share}.")
    if count < 0:
        raise ValueError(f"{MAX_COUNT_ENV} must not be negative, got {count}.")
    return share, count


def measure_impact(operations: Iterable[Operation], applied: AppliedState) -> GuardImpact:
    """Count the members that ``operations`` would deactivate, delete or clear a mapped field of."""
    deactivated: set[str] = set()
    deleted: set[str] = set()
    cleared: set[str] = set()
    for operation in operations:
        if operation.kind is OpKind.MEMBER_DELETE:
            deleted.add(operation.contact_id)
        elif is_deactivation(operation):
            deactivated.add(operation.contact_id)
        elif operation.kind is OpKind.MEMBER_UPDATE and any(
            name.startswith(CUSTOM_FIELD_PREFIX) for name in operation.cleared
        ):
            cleared.add(operation.contact_id)
    members = applied.members
    total = int(members["member_id"].notna().sum()) if "member_id" in members.columns else len(members)
    return GuardImpact(
        deactivated=len(deactivated),
        deleted=len(deleted),
        cleared=len(cleared),
        affected=len(deactivated | deleted | cleared),
        total=total,
    )


def check_guard(
    operations: Iterable[Operation],
    applied: AppliedState,
    *,
    max_share: float,
    max_count: int,
    force: bool,
) -> GuardImpact:
    """Raise ``GuardError`` when the plan affects more than ``max_share`` and ``max_count`` members.

    :return: the measured impact, also when ``force`` lets a large plan through.
    """
    impact = measure_impact(operations, applied)
    too_many = impact.affected > max_count and impact.affected > max_share * impact.total
    if not too_many:
        return impact
    summary = (
        f"The plan would deactivate {impact.deactivated}, delete {impact.deleted} and clear a mapped "
        f"field of {impact.cleared} members: {impact.affected} of {impact.total} members "
        f"({impact.share:.1%}), above the limit of {max_share:.0%} and {max_count} members"
    )
    if force:
        log.warning("%s; applying it because force is set.", summary)
        return impact
    raise GuardError(
        f"{summary}. Check that the GHL extract is complete and the mapping is right, then rerun with "
        f"force to apply the plan, or raise {MAX_SHARE_ENV} / {MAX_COUNT_ENV}.",
        impact=impact,
    )
