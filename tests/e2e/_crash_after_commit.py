"""Test-only launcher: `keystate ...` whose processor SIGKILLs itself right before its Nth store write.

`python tests/e2e/_crash_after_commit.py processor --state-dir ...` with $KEYSTATE_TEST_CRASH_AT_COMMIT=N.
`PartitionStore.commit` runs after the batch's transaction committed; the Nth call kills the process
before it writes the store and its checkpoint, so the broker holds a commit the store never saw.
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


def _commit_or_die(self: Any, *args: Any, **kwargs: Any) -> Any:
    global _calls
    _calls += 1
    if _calls >= _crash_at:
        os.write(2, f"{CRASH_MARKER} (call {_calls})\n".encode())
        os.kill(os.getpid(), signal.SIGKILL)
    return _commit(self, *args, **kwargs)


store.PartitionStore.commit = _commit_or_die  # type: ignore[method-assign]

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
