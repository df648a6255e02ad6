"""The way a run ends early on bad input, and reading the errors libraries raise."""

from __future__ import annotations

from collections.abc import Iterator


class UserError(Exception):
    """Bad input: the message names the problem and what to do instead (exit status 2)."""

    exit_code = 2


def causes(error: BaseException) -> Iterator[BaseException]:
    """The error and those it was raised from or while handling: a library's wrapper hides the original often."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__
