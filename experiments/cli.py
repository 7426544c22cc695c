"""The entry point shared by the experiment scripts: bad input is `error: ...` and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable


def script_main(build_parser: Callable, run: Callable, argv=None,
                errors: tuple[type[BaseException], ...] = (ValueError, TypeError)) -> int:
    """Parses ``argv``, calls ``run(args)``; an exception in ``errors`` prints `error: ...`, returns 2."""
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
