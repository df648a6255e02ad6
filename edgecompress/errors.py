"""The two ways a run ends early on purpose, each with its exit status."""


class UserError(Exception):
    """Bad input: the message names the problem and what to do instead (exit status 2)."""

    exit_code = 2


class NotAvailableYet(UserError):
    """A recipe asks for a capability that this release parses but does not implement."""
