"""The one exception type users see: what went wrong, and what to do about it."""


class KvasirError(RuntimeError):
    """A problem the user can fix; the message names the problem and the remedy."""
