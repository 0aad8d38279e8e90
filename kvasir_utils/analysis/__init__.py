"""Reading what the runs wrote, and the paper's tables, the statistics and the audit's numbers.

Torch-free: pandas, numpy, scipy and scikit-learn only, so the reports render anywhere. Imports
nothing of data, train or run.
"""
