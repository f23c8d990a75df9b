"""Test-only launcher: `keystate ...` whose processor SIGKILLs itself before a store write (the Nth or after).

`python tests/e2e/_crash_after_commit.py processor --state-dir ...` with $KEYSTATE_TEST_CRASH_AT_COMMIT=N.
`PartitionStore.commit(records, checkpoint)` runs after the batch's transaction committed; its Nth
call (or the first after it with rows to write) kills the process before it writes the rows and the
checkpoint, so the changelog holds a committed batch the store never saw.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stores import CRASH_AT_ENV, CRASH_MARKER  # noqa: E402

from keystate.cli import main  # noqa: E402
from keystate.processors import store  # noqa: E402

_crash_at = int(os.environ[CRASH_AT_ENV])
_calls = 0
_commit = store.PartitionStore.commit


def _commit_or_die(self: Any, records: Any, *args: Any, **kwargs: Any) -> Any:
    global _calls
    records = list(records)
    _calls += 1
    # Only a batch with rows for this store: its loss must show as a tail the restart reads again.
    if _calls >= _crash_at and records:
        os.write(2, f"{CRASH_MARKER} (call {_calls})\n".encode())
        os.kill(os.getpid(), signal.SIGKILL)
    return _commit(self, records, *args, **kwargs)


store.PartitionStore.commit = _commit_or_die  # type: ignore[method-assign]

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
