"""Measuring speed: ``make bench`` (the protocol projected from measured stages) and ``make gpu-check``."""
