"""Helpers of the Kvasir v2 study: every piece of logic the notebooks call."""

__version__ = "0.1.0"
