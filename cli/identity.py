"""`keystate identity show|create`: the public key deployments list in `identity_keys`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parser"]


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "identity",
        help="show (or create) the key keystate signs requests to deployments with",
        description="Prints the public key (publickeyv1_...) to list in a deployment's identity_keys.",
    )
    parser.add_argument(
        "action",
        choices=["show", "create"],
        help="show: print the public key of the existing key file; create: create the key file unless it exists, "
        "then print its public key",
    )
    parser.add_argument("--identity-key-file", type=Path, default=None,
                        help="the key file (default $KEYSTATE_IDENTITY_KEY_FILE, else <state dir>/identity.pem)")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="the processors' state dir (default $KEYSTATE_STATE_DIR, $XDG_STATE_HOME/keystate "
                        "or ~/.local/state/keystate)")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from keystate.server.identity import IdentityError, create_key_file, identity_key_path, load_identity

    path, configured = identity_key_path(args.identity_key_file, args.state_dir)
    try:
        if args.action == "create":
            identity = create_key_file(path)
        elif not path.exists() and not configured:
            print(
                f"keystate identity: no key yet at {path}; a processor creates it at its first start, "
                "or create it now with `keystate identity create`",
                file=sys.stderr,
            )
            return 1
        else:
            identity = load_identity(path)
    except IdentityError as exc:
        print(f"keystate identity: {exc}", file=sys.stderr)
        return 1
    print(identity.public_key)
    return 0
