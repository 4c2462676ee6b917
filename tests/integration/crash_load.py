"""Child process of the kill harness: run one pair's load step and stop at a chosen point.

``tests/integration/test_crash_safety.py`` starts it as
``python crash_load.py PREPARED_JSON OPTIONS_JSON POINT COUNT``. The script runs
``ghl_memberstack.sync.load_pair`` with the prepared plan. At the chosen point it prints
``HALT <point> <count>`` on stdout and blocks, and the parent kills it with SIGKILL. If the load
ends first, it prints ``DONE``.

Points, each at the COUNT-th occurrence (counting from 1):

- ``before_write``: before a Memberstack write request is sent;
- ``after_write``: after a Memberstack write returned, before the loader journals it;
- ``journal_entry``: inside a journal entry write, after its temporary file is written and synced
  but before it is renamed over the entry;
- ``commit_file``: before one of the snapshot files of the commit is written (COUNT 1 writes none);
- ``commit_manifest_tmp``: inside the manifest write, after its temporary file is written and
  synced but before it replaces the current manifest;
- ``commit_after_manifest``: right after the new manifest was written, before old state is pruned.

The connections, the storage URL and the settings come from the environment, as in a task.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

WRITE_METHODS = frozenset(
    {
        "create_member",
        "update_member",
        "delete_member",
        "add_plan",
        "remove_plan",
        "create_record",
        "update_record",
        "delete_record",
    }
)
POINTS = (
    "before_write",
    "after_write",
    "journal_entry",
    "commit_file",
    "commit_manifest_tmp",
    "commit_after_manifest",
)


def halt(point: str, count: int) -> None:
    """Print the halt point for the parent, then block until the parent kills this process."""
    sys.stdout.write(f"HALT {point} {count}\n")
    sys.stdout.flush()
    threading.Event().wait()


class CountingHook:
    """Forwards to a ``MemberstackHook`` and halts around its ``count``-th write."""

    def __init__(self, hook: Any, point: str, count: int) -> None:
        self._hook = hook
        self._point = point
        self._count = count
        self._writes = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._hook, name)
        if name not in WRITE_METHODS or self._point not in ("before_write", "after_write"):
            return attribute

        def write(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self._writes += 1
                number = self._writes
            if self._point == "before_write" and number == self._count:
                halt(self._point, number)
            result = attribute(*args, **kwargs)
            if self._point == "after_write" and number == self._count:
                halt(self._point, number)
            return result

        return write


def install_storage_points(point: str, count: int) -> None:
    """Wrap the snapshot module's ``write_atomic`` so that journal and commit writes can halt."""
    from ghl_memberstack import snapshot, storage

    original = storage.write_atomic
    seen = {"journal": 0, "commit": 0}
    lock = threading.Lock()

    def write_synced_temporary(path: Any, data: bytes) -> None:
        # The first half of storage.write_atomic on a local folder: the rename never happens.
        local = Path(storage.as_storage_path(path).path)
        local.parent.mkdir(parents=True, exist_ok=True)
        temporary = local.with_name(f".{local.name}.{uuid.uuid4().hex}.tmp")
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    def write_atomic(path: Any, data: bytes) -> None:
        text = str(path)
        name = text.rsplit("/", 1)[-1]
        if point == "journal_entry" and "/journal/" in text and name != snapshot.JOURNAL_STARTED_NAME:
            with lock:
                seen["journal"] += 1
                number = seen["journal"]
            if number == count:
                write_synced_temporary(path, data)
                halt(point, number)
        if point == "commit_file" and "/snapshots/" in text:
            seen["commit"] += 1
            if seen["commit"] == count:
                halt(point, count)
        if name == snapshot.MANIFEST_NAME and point == "commit_manifest_tmp":
            write_synced_temporary(path, data)
            halt(point, 1)
        original(path, data)
        if name == snapshot.MANIFEST_NAME and point == "commit_after_manifest":
            halt(point, 1)

    snapshot.write_atomic = write_atomic


def main(argv: list[str]) -> int:
    """Run the load step of the prepared plan with the halt point installed."""
    prepared_path, options_path, point, count_text = argv
    if point not in POINTS:
        raise SystemExit(f"unknown halt point {point!r}; expected one of {', '.join(POINTS)}")
    count = int(count_text)
    prepared = json.loads(Path(prepared_path).read_text(encoding="utf-8"))
    options_data = json.loads(Path(options_path).read_text(encoding="utf-8"))

    from ghl_memberstack import sync
    from ghl_memberstack.hooks.memberstack import MemberstackHook

    install_storage_points(point, count)
    hook = CountingHook(MemberstackHook(prepared["pair"]["memberstack_conn_id"]), point, count)
    options = sync.RunOptions.from_dict(options_data)
    try:
        sync.load_pair(prepared, options, memberstack_hook=hook)
    except sync.OperationsFailedError as error:
        sys.stdout.write(f"FAILED {type(error).__name__}\n")
        return 3
    sys.stdout.write("DONE\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
