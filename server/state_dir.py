"""Where keystate processes keep local state (partition stores, the admin read model)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["STATE_DIR_ENV", "default_state_dir"]

STATE_DIR_ENV = "KEYSTATE_STATE_DIR"


def default_state_dir() -> Path:
    """`$KEYSTATE_STATE_DIR`, else `$XDG_STATE_HOME/keystate`, else `~/.local/state/keystate`.

    Everything under it can be rebuilt from Kafka: losing it costs a longer start, not data.
    """
    if os.environ.get(STATE_DIR_ENV):
        return Path(os.environ[STATE_DIR_ENV])
    if os.environ.get("XDG_STATE_HOME"):
        return Path(os.environ["XDG_STATE_HOME"]) / "keystate"
    return Path.home() / ".local" / "state" / "keystate"
