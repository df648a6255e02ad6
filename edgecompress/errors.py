"""The way a run ends early on bad input."""


class UserError(Exception):
    """Bad input: the message names the problem and what to do instead (exit status 2)."""

    exit_code = 2
