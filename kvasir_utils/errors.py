"""The one exception type users see: what went wrong, and what to do about it."""


class KvasirError(RuntimeError):
    """A problem the user can fix; the message names the problem and the remedy."""


class DiskFullError(KvasirError):
    """A write found no space left; the message names the folder, what it needs and the remedy."""
