"""User-facing errors: one line naming the file and the problem, non-zero exit, no traceback.

Expected problems with a user's input raise :class:`InputError`; console scripts wrap their
``main`` in :func:`cli_entry`, which prints ``error: <file>: <problem>`` to stderr and exits 2.
Operating-system errors (a full disk, a folder that is a file, a name the file system refuses,
no permission) are expected too and print the same way, with the path the system names; a write
through :func:`nnunet_joint.io.atomic_path` names its destination even when the system names
nothing (a full disk fails in ``write()``, which carries no file name).
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import math
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


def warn(where: str | os.PathLike, problem: str) -> None:
    """Print one ``warning: <file>: <problem>`` line on stderr: worth a look, but the command goes on."""
    print(f"warning: {where}: {problem}", file=sys.stderr, flush=True)


def plain_numbers(values: object, digits: int = 5) -> str:
    """Numbers as a user reads them: ``8.65271``, and ``(8.65271, 8.65271)`` for a sequence.

    A tuple of numpy scalars prints numpy 2's reprs (``(np.float64(8.65271), ...)``); every message that
    prints a number or a vector goes through here instead. Floats are rounded to ``digits`` decimals
    and printed in Python's shortest form (``-24.0``, ``0.70312``); whole numbers stay whole.
    """
    if isinstance(values, (str, bytes)):
        return str(values)
    try:
        items = list(values)  # type: ignore[call-overload]
    except TypeError:
        number = values.item() if hasattr(values, "item") else values  # a numpy scalar -> its Python value
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            return str(number)
        return str(number) if isinstance(number, int) else repr(round(float(number), digits))
    return "(" + ", ".join(plain_numbers(v, digits) for v in items) + ")"


def check_number(option: str, value: float, minimum: float | None = None, strict: bool = False) -> float:
    """Refuse a numeric option that is NaN, infinite, or below ``minimum`` (at or below it when ``strict``).

    ``nan < 0`` is False, so a plain comparison lets NaN through; every float option goes through here.
    """
    bound = "" if minimum is None else (f" > {minimum:g}" if strict else f" >= {minimum:g}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(None, f"{option} must be a number{bound}, got {value!r}") from None
    if not math.isfinite(number):
        raise InputError(None, f"{option} must be a finite number{bound}, got {value}")
    if minimum is not None and (number < minimum or (strict and number == minimum)):
        raise InputError(None, f"{option} must be{bound}, got {value}")
    return number


def os_error_line(error: OSError) -> str:
    """``<path>: <problem>`` for an operating-system error (``<path> -> <path2>`` for a rename)."""
    problem = " ".join((error.strerror or str(error) or type(error).__name__).split())
    if error.filename is None:
        return problem
    where = str(error.filename) + (f" -> {error.filename2}" if error.filename2 is not None else "")
    return f"{where}: {problem}"


def cli_entry(main: Callable[[Sequence[str] | None], int | None]) -> Callable[[Sequence[str] | None], int]:
    """Wrap a console-script ``main(argv)`` so that :class:`InputError` and :class:`OSError` become one line, exit 2."""

    @functools.wraps(main)
    def wrapper(argv: Sequence[str] | None = None) -> int:
        try:
            code = main(argv)
        except InputError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(EXIT_INPUT_ERROR)
        except OSError as e:  # disk full, permissions, a file where a folder belongs: the system's words
            print(f"error: {os_error_line(e)}", file=sys.stderr)
            raise SystemExit(EXIT_INPUT_ERROR)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130)
        return 0 if code is None else int(code)

    return wrapper
