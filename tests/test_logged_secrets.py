"""Everything the suite logged is free of the tokens, keys and passwords that the tests used.

The conftest collects the captured stdout, stderr and log records of every test phase and runs
this test last. A hit names the kind of secret and the number of places, never the secret.
"""

from __future__ import annotations

import os
import re

from sandbox import seedgen

# Credentials of the demo seed and of the hook tests, and the tokens the sandbox and the fakes issue.
SECRET_PATTERNS = {
    "GHL private integration token": re.escape(seedgen.DEMO_LOCATION_A_PIT),
    "GHL OAuth client secret": re.escape(seedgen.DEMO_OAUTH_CLIENT_SECRET),
    "GHL initial refresh token": re.escape(seedgen.DEMO_REFRESH_TOKEN_B),
    "GHL authorization code": re.escape(seedgen.DEMO_AUTHORIZATION_CODE_B),
    "Memberstack secret key": "|".join(
        re.escape(key) for key in (seedgen.DEMO_MEMBERSTACK_KEY_A, seedgen.DEMO_MEMBERSTACK_KEY_B)
    ),
    "sandbox-issued OAuth token": r"sbx-(?:at|rt)-[A-Za-z0-9_-]{16,}",
    "hook test credential": (
        r"pit-unit-token-\d+|rt-seed-unit-\d+|unit-client-secret-value|sk_sb_unit_key_\d+"
    ),
    "hook test issued token": r"(?:at|rt)-unit-\d{6}-x+",
    "wrong key sent to the Test button": r"sk_sb_wrong_key_for_button|pit-wrong-token-for-button",
    "Airflow Fernet key": re.escape(os.environ.get("AIRFLOW__CORE__FERNET_KEY", "")) or r"(?!)",
}


def test_suite_output_holds_no_secret(suite_output):
    hits = {
        kind: sum(len(re.findall(pattern, text)) for text in suite_output)
        for kind, pattern in SECRET_PATTERNS.items()
    }

    assert {kind: count for kind, count in hits.items() if count} == {}
