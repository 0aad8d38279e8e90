"""The data stage: sources, extraction, class folders, the resized cache, the split, the dataset,
generated archives, and what the frames carry besides tissue (overlays, near-duplicates).

Imports nothing of train, analysis, report or run.
"""
