"""What a reader sees: notebook outputs (banner, tables, figures), the figures themselves, and the
HTML site.

Torch-free: imports analysis, never data, train or run.
"""
