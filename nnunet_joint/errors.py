"""User-facing errors: one line naming the file and the problem, non-zero exit, no traceback.

Expected problems with a user's input raise :class:`InputError`; console scripts wrap their
``main`` in :func:`cli_entry`, which prints ``error: <file>: <problem>`` to stderr and exits 2.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable, Sequence


class InputError(Exception):
    """An expected problem with user input (a file, a folder, an option)."""

    def __init__(self, where: str | os.PathLike | None, problem: str):
        self.where = None if where is None else str(where)
        self.problem = problem
        super().__init__(problem if where is None else f"{where}: {problem}")


EXIT_INPUT_ERROR = 2


def cli_entry(main: Callable[[Sequence[str] | None], int | None]) -> Callable[[Sequence[str] | None], int]:
    """Wrap a console-script ``main(argv)`` so that :class:`InputError` becomes one line and exit 2."""

    @functools.wraps(main)
    def wrapper(argv: Sequence[str] | None = None) -> int:
        try:
            code = main(argv)
        except InputError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(EXIT_INPUT_ERROR)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130)
        return 0 if code is None else int(code)

    return wrapper
