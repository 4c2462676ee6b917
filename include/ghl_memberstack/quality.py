"""Great Expectations checks of one extracted batch, run before anything is loaded.

Each call builds an ephemeral GX Core context with a pandas data source, so nothing is written
unless ``docs_dir`` is set for Data Docs. GX sees only derived columns (integer codes of contact
and record ids, ``email_valid``, ``has_phone``, ``date_updated_ms``, ``contact_known``), never
emails, names, phones or bodies, so neither its results nor its Data Docs contain personal data.

Expectations, by name:
    contact_ids_not_null, contact_ids_unique, date_updated_not_null    always
    valid_email_share, phone_share    complete observations of at least ``min_rows_for_shares``
                                      contacts; skipped otherwise, because small or partial batches
                                      give noisy shares
    extract_not_empty                 complete observations when the snapshot contains members
    record_ids_unique, records_have_contacts    always, over the desired Data Table records
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
from typing import Any

import numpy as np
import pandas as pd

from ghl_memberstack.mapping import REASON_INVALID_EMAIL, REASON_MISSING_EMAIL
from ghl_memberstack.models import is_member
from ghl_memberstack.state import DesiredState

log = logging.getLogger(__name__)

DEFAULT_MIN_VALID_EMAIL_SHARE = 0.9
DEFAULT_MIN_ROWS_FOR_SHARES = 100
_DATA_SOURCE = "ghl_memberstack"
_DOCS_SITE = "ghl_memberstack_docs"


@dataclasses.dataclass(frozen=True)
class QualityResult:
    """Outcome of a batch's expectations, with each expectation's name, outcome and observed value."""

    success: bool
    expectations: list[dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class _Check:
    name: str
    suite: str
    expectation: Any
    threshold: float | None = None


def _quiet_gx() -> None:
    # GX 1.24 logs its registrations at import and its datasource loading at INFO. The context
    # config turns its progress bars and analytics off.
    logging.getLogger("great_expectations").setLevel(logging.WARNING)


def _codes(values: pd.Series | pd.Index, offset: int = 0) -> tuple[pd.arrays.IntegerArray, int]:
    """Return integer codes, equal exactly where the values are equal and <NA> for missing values.

    GX 1.24 fingerprints every batch under 1 GB with ``pandas.util.hash_pandas_object``, which
    took about 0.5 s per million pyarrow strings on a 2-core VM, so the views hand GX codes
    instead of id strings. The second item is the next free code, for coding another table.
    """
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    shifted = codes.astype("int64") + offset
    # A masked array keeps -1 (missing) apart from real codes.
    return pd.arrays.IntegerArray(shifted, codes < 0), offset + len(uniques)


def contacts_view(contacts: pd.DataFrame, desired: DesiredState) -> pd.DataFrame:
    """Return the derived contact columns GX validates, with no personal values.

    ``id_code`` stands for the contact id (equal codes for equal ids). ``email_valid`` is False
    for contacts that the mapping quarantined for a missing or invalid email, and True for all
    others, including contacts that lost their email to a duplicate.
    """
    invalid_ids = {
        entry.ghl_id
        for entry in desired.quarantine
        if entry.entity == "contacts" and entry.reason in (REASON_INVALID_EMAIL, REASON_MISSING_EMAIL)
    }
    ids = contacts["id"].astype("string")
    phones = contacts["phone"].astype("string")
    return pd.DataFrame(
        {
            "id_code": _codes(ids)[0],
            "email_valid": pd.array(~is_member(ids, invalid_ids), dtype="boolean"),
            "has_phone": pd.array(phones.str.strip().fillna("").ne("").to_numpy(dtype=bool), dtype="boolean"),
            "date_updated_ms": pd.array(contacts["date_updated_ms"].to_numpy(dtype=object), dtype="Int64"),
        }
    )


def records_view(desired: DesiredState) -> pd.DataFrame:
    """Return one row per desired Data Table record, coded by table and GHL id, with ``contact_known``."""
    member_ids = desired.members.index
    key_codes = []
    known = []
    offset = 0
    for frame in desired.records.values():
        codes, offset = _codes(frame.index, offset)
        key_codes.append(codes)
        known.append(is_member(frame["contact_id"], member_ids))
    if not key_codes:
        return pd.DataFrame(
            {"record_code": pd.array([], dtype="Int64"), "contact_known": pd.array([], dtype="boolean")}
        )
    return pd.DataFrame(
        {
            "record_code": pd.array(pd.concat([pd.Series(codes) for codes in key_codes], ignore_index=True)),
            "contact_known": pd.array(np.concatenate(known), dtype="boolean"),
        }
    )


def _checks(
    *,
    apply_shares: bool,
    apply_not_empty: bool,
    min_valid_email_share: float,
    min_phone_share: float,
) -> tuple[list[_Check], list[dict[str, Any]]]:
    """Return the checks to run and report entries for the checks this batch skips."""
    import great_expectations as gx

    expectations = gx.expectations
    checks = [
        _Check(
            "contact_ids_not_null", "contacts", expectations.ExpectColumnValuesToNotBeNull(column="id_code")
        ),
        _Check("contact_ids_unique", "contacts", expectations.ExpectColumnValuesToBeUnique(column="id_code")),
        _Check(
            "date_updated_not_null",
            "contacts",
            expectations.ExpectColumnValuesToNotBeNull(column="date_updated_ms"),
        ),
        _Check(
            "record_ids_unique",
            "records",
            expectations.ExpectColumnValuesToBeUnique(column="record_code"),
        ),
        _Check(
            "records_have_contacts",
            "records",
            expectations.ExpectColumnValuesToBeInSet(column="contact_known", value_set=[True]),
        ),
    ]
    skipped: list[dict[str, Any]] = []
    share_checks = [
        ("valid_email_share", "email_valid", min_valid_email_share),
        ("phone_share", "has_phone", min_phone_share),
    ]
    for name, column, threshold in share_checks:
        if apply_shares:
            expectation = expectations.ExpectColumnValuesToBeInSet(
                column=column, value_set=[True], mostly=threshold
            )
            checks.append(_Check(name, "contacts", expectation, threshold))
        else:
            skipped.append(_skipped(name, "applies only to complete observations with enough contacts"))
    if apply_not_empty:
        checks.append(
            _Check("extract_not_empty", "contacts", expectations.ExpectTableRowCountToBeBetween(min_value=1))
        )
    else:
        skipped.append(
            _skipped("extract_not_empty", "applies only to complete observations of a non-empty snapshot")
        )
    return checks, skipped


def _skipped(name: str, note: str) -> dict[str, Any]:
    return {
        "name": name,
        "expectation": None,
        "success": True,
        "observed": None,
        "skipped": True,
        "note": note,
    }


def _observed(check: _Check, result: dict[str, Any]) -> Any:
    if "observed_value" in result:
        return result["observed_value"]
    elements = int(result.get("element_count", 0))
    unexpected = int(result.get("unexpected_count", 0))
    if check.threshold is not None:
        return round((elements - unexpected) / elements, 4) if elements else None
    return {"element_count": elements, "unexpected_count": unexpected}


def _context(docs_dir: str | os.PathLike[str] | None) -> Any:
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    sites = {}
    if docs_dir is not None:
        sites[_DOCS_SITE] = {
            "class_name": "SiteBuilder",
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
        }
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        progress_bars=ProgressBarsConfig(globally=False),
        analytics_enabled=False,
        data_docs_sites=sites,
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _run_suite(
    context: Any, name: str, frame: pd.DataFrame, checks: list[_Check], build_docs: bool
) -> list[Any]:
    """Validate one derived frame against its checks and return GX's results in the checks' order."""
    import great_expectations as gx

    source = context.data_sources.get(_DATA_SOURCE)
    batch_definition = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
    suite = context.suites.add(gx.ExpectationSuite(name=name))
    for check in checks:
        suite.add_expectation(check.expectation)

    if build_docs:
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=batch_definition, suite=suite)
        )
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=f"{name}_checkpoint",
                validation_definitions=[definition],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=[_DOCS_SITE])],
            )
        )
        run = checkpoint.run(batch_parameters={"dataframe": frame})
        validation = next(iter(run.run_results.values()))
    else:
        batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
        validation = batch.validate(suite, result_format="BASIC")
    by_id = {result.expectation_config.id: result for result in validation.results}
    return [by_id[check.expectation.id] for check in checks]


def validate_batch(
    contacts_frame: pd.DataFrame,
    desired: DesiredState,
    *,
    complete: bool,
    snapshot_size: int,
    docs_dir: str | os.PathLike[str] | None = None,
    min_valid_email_share: float = DEFAULT_MIN_VALID_EMAIL_SHARE,
    min_phone_share: float = 0.0,
    min_rows_for_shares: int = DEFAULT_MIN_ROWS_FOR_SHARES,
) -> QualityResult:
    """Run the batch expectations on the extracted contacts and the desired state derived from them.

    ``contacts_frame`` is the parsed contacts frame of the batch, as extracted (overlap re-reads
    deduplicated). ``snapshot_size`` is the number of members in the last applied snapshot.
    ``docs_dir``, when set, receives GX Data Docs of this run as static HTML.
    """
    _quiet_gx()
    apply_shares = complete and len(contacts_frame) >= min_rows_for_shares
    apply_not_empty = complete and snapshot_size > 0
    checks, skipped = _checks(
        apply_shares=apply_shares,
        apply_not_empty=apply_not_empty,
        min_valid_email_share=min_valid_email_share,
        min_phone_share=min_phone_share,
    )
    if docs_dir is not None:
        pathlib.Path(docs_dir).mkdir(parents=True, exist_ok=True)
    context = _context(docs_dir)
    context.data_sources.add_pandas(_DATA_SOURCE)
    views = {"contacts": contacts_view(contacts_frame, desired), "records": records_view(desired)}

    entries: list[dict[str, Any]] = []
    for suite_name, frame in views.items():
        suite_checks = [check for check in checks if check.suite == suite_name]
        results = _run_suite(context, suite_name, frame, suite_checks, docs_dir is not None)
        entries += [_entry(check, result) for check, result in zip(suite_checks, results, strict=True)]

    entries += skipped
    success = all(entry["success"] for entry in entries)
    failed = [entry["name"] for entry in entries if not entry["success"]]
    if failed:
        log.warning("Batch expectations failed: %s", ", ".join(failed))
    else:
        log.info("All %d batch expectations passed, %d skipped", len(entries) - len(skipped), len(skipped))
    return QualityResult(success=success, expectations=entries)


def _exception_message(info: dict[str, Any] | None) -> str | None:
    """Return the first error message in a result's exception info, or None when nothing raised."""
    if not info:
        return None
    if info.get("raised_exception"):
        return info.get("exception_message") or "the expectation raised an error"
    # GX 1.x keys the info by metric when a metric computation raised.
    for value in info.values():
        if isinstance(value, dict) and value.get("raised_exception"):
            return value.get("exception_message") or "a metric computation raised an error"
    return None


def _entry(check: _Check, result: Any) -> dict[str, Any]:
    entry = {
        "name": check.name,
        "expectation": result.expectation_config.type,
        "success": bool(result.success),
        "observed": None,
        "skipped": False,
        "note": "",
    }
    error = _exception_message(result.exception_info)
    if error is not None:
        # GX reports a metric error as a failed result instead of raising it.
        entry.update(success=False, note=f"error: {error}")
        return entry
    entry["observed"] = _observed(check, dict(result.result))
    if check.threshold is not None:
        entry["note"] = f"minimum share {check.threshold}"
    return entry
