"""Errors a user can cause. The command-line layer prints their message and exits non-zero."""


class SabnetError(Exception):
    """A problem the user can fix (bad file, wrong flag, mismatched checkpoint).

    The message names the file or setting at fault and what to do about it.
    """
