"""Errors the CLI reports in one line with exit code 2: the user can fix them."""


class UserError(Exception):
    """A mistake in the config, the command line or the user's files; the message says the fix."""
