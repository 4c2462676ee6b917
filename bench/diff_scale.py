"""Measure the diff on synthetic state: N contacts with 3 tasks and 3 notes each.

Three cases run against an applied state that contains the same data: nothing changed, 1 % of members
and 1 % of tasks changed, and a first load (empty applied state, every row a create). The first-load
case builds one Operation per member, plan and record, so it runs on ``--first-load`` contacts
(default 100,000) unless told otherwise. ``apply_result`` after the unchanged load is timed too,
since every run folds its result into the next snapshot.

    .venv/bin/python bench/diff_scale.py --contacts 1000000
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import pandas as pd

from ghl_memberstack.diff import plan_operations
from ghl_memberstack.load import LoadResult, apply_result
from ghl_memberstack.mapping import Mapping, member_columns, record_columns
from ghl_memberstack.snapshot import empty_applied
from ghl_memberstack.state import AppliedState, DesiredState

RECORDS_PER_CONTACT = 3
MAPPING = Mapping(
    custom_fields={"contact.membership_tier": "membership-tier"},
    tag_plans={"vip": "pln_vip-free", "member": "pln_members-free"},
)


def text(values: list[str | None]) -> pd.api.extensions.ExtensionArray:
    return pd.array(values, dtype="string")


def members_frame(count: int) -> pd.DataFrame:
    contact_ids = [f"c{i:07d}" for i in range(count)]
    constant = {
        "cf:first-name": "Ada",
        "cf:last-name": "Byron",
        "cf:phone": "+15550100",
        "cf:ghl-tags": "member,vip",
        "cf:ghl-status": "active",
        "cf:membership-tier": "Gold",
        "plans": "pln_members-free,pln_vip-free",
        "status": "active",
    }
    data = {"email": text([f"{cid}@example.org" for cid in contact_ids])}
    data |= {column: text([value] * count) for column, value in constant.items()}
    data["json"] = text([None] * count)
    data["date_updated"] = pd.array(np.arange(count), dtype="Int64")
    frame = pd.DataFrame(data, index=pd.Index(text(contact_ids), name="contact_id"))
    return frame[member_columns(MAPPING)]


def records_frame(table: str, prefix: str, contact_ids: pd.Index) -> pd.DataFrame:
    count = len(contact_ids) * RECORDS_PER_CONTACT
    ghl_ids = text([f"{prefix}{i}" for i in range(count)])
    owners = text(list(np.repeat(np.asarray(contact_ids, dtype=object), RECORDS_PER_CONTACT)))
    data = {"contact_id": owners, "ghl_contact_id": owners, "ghl_location_id": text(["Loc1"] * count)}
    for column in record_columns(table):
        if column in data:
            continue
        if column.startswith("ghl_") and column.endswith("_id"):
            data[column] = ghl_ids
        elif column == "completed":
            data[column] = pd.array([False] * count, dtype="boolean")
        else:
            data[column] = text(["Call back about the invoice"] * count)
    return pd.DataFrame(data, index=pd.Index(ghl_ids, name="ghl_id"))[record_columns(table)]


def desired_state(count: int) -> DesiredState:
    members = members_frame(count)
    records = {
        "ghl_tasks": records_frame("ghl_tasks", "t", members.index),
        "ghl_notes": records_frame("ghl_notes", "n", members.index),
        "ghl_appointments": records_frame("ghl_appointments", "a", members.index[:0]),
    }
    return DesiredState(members=members, records=records, complete=True)


def applied_state(desired: DesiredState) -> AppliedState:
    members = desired.members.copy()
    members["member_id"] = text([f"mem_{i}" for i in range(len(members))])
    records = {}
    for table, frame in desired.records.items():
        frame = frame.copy()
        frame["record_id"] = text([f"rec_{i}" for i in range(len(frame))])
        frame["member_id"] = text(["mem"] * len(frame))
        records[table] = frame
    return AppliedState(members=members, records=records)


def changed_copy(desired: DesiredState, share: float) -> DesiredState:
    step = max(1, round(1 / share))
    members = desired.members.copy()
    members.iloc[::step, members.columns.get_loc("cf:first-name")] = "Changed"
    tasks = desired.records["ghl_tasks"].copy()
    tasks.iloc[::step, tasks.columns.get_loc("title")] = "Edited"
    return DesiredState(members=members, records={**desired.records, "ghl_tasks": tasks}, complete=True)


def timed(label: str, desired: DesiredState, applied: AppliedState) -> None:
    observed = desired.members.index
    started = time.perf_counter()
    operations = plan_operations(desired, applied, MAPPING, observed_contact_ids=observed)
    elapsed = time.perf_counter() - started
    print(f"{label:<34} {len(operations):>10,} operations {elapsed:8.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--contacts", type=int, default=1_000_000, help="contacts of the unchanged and 1 %% cases"
    )
    parser.add_argument("--first-load", type=int, default=100_000, help="contacts of the first-load case")
    args = parser.parse_args()

    started = time.perf_counter()
    desired = desired_state(args.contacts)
    applied = applied_state(desired)
    print(
        f"built {args.contacts:,} contacts and {2 * RECORDS_PER_CONTACT * args.contacts:,} records "
        f"in {time.perf_counter() - started:.1f} s"
    )
    timed("unchanged", desired, applied)
    started = time.perf_counter()
    apply_result(applied, desired, LoadResult())
    print(f"{'apply_result after no writes':<34} {'':>21} {time.perf_counter() - started:8.2f} s")
    timed("1 % of members and tasks changed", changed_copy(desired, 0.01), applied)
    del desired, applied
    timed(f"first load of {args.first_load:,} contacts", desired_state(args.first_load), empty_applied())
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak resident memory {peak_gib:.2f} GiB")


if __name__ == "__main__":
    main()
