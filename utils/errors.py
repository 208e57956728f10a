"""User-facing errors: one clear line, no traceback."""

from __future__ import annotations

import sys
from typing import Callable, TypeVar

T = TypeVar("T")


class UserError(Exception):
    """A problem with the user's input (file, flag, data). Printed as one line by `run_cli`."""


def run_cli(main: Callable[[], T]) -> T:
    """Run a CLI entry point; turn `UserError` into `error: <message>` on stderr and exit code 2."""
    try:
        return main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
