"""What every command shares: error handling that prints one clear line, and logging of roots."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from sabnet.errors import SabnetError


def run_command(main: Callable[[argparse.Namespace], int | None], parser: argparse.ArgumentParser,
                argv: Sequence[str] | None = None) -> int:
    """Parse `argv`, run `main(args)`; a SabnetError becomes 'error: ...' on stderr and exit code 1.

    Returns the exit code (also used as the process exit status by the console scripts).
    """
    args = parser.parse_args(argv)
    try:
        code = main(args)
    except SabnetError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)
