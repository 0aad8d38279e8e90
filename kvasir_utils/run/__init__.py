"""Running the study: the command line the Makefile calls, notebooks run headlessly, sweeps on Ray.

The top of the dependency graph: it may import every other part.
"""
