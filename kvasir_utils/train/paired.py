"""Paired A/B timing: two settings' steps alternated over rounds after a warm-up, so that neither is
favoured by coming first, by a warm-up or by a change of load on a shared machine. Torch-free (the
caller passes its device's synchronisation): the runtime probe (``train.probe``) and ``make bench``
(``bench.timing``, ``bench.projection``) share it.
"""

from __future__ import annotations

import statistics
import time


def _no_sync() -> None:
    """A CPU's work is done when its call returns: nothing to wait for."""


def _timed(step, batch, targets, steps: int, synchronize, clock) -> float:
    synchronize()
    start = clock()
    for _ in range(steps):
        step(batch, targets)
    synchronize()
    return steps * len(targets) / (clock() - start)


def paired_ratio(step_a, step_b, batch, targets, synchronize=_no_sync, rounds: int = 7, steps: int = 2,
                 warmup: int = 2, clock=time.perf_counter) -> dict:
    """A's images per second over B's, paired: both warmed up (``warmup`` steps each), then
    ``rounds`` rounds of ``steps`` steps of each, in the order A B, B A, A B, ... (so neither always
    runs first); the median of the rounds' ratios and their spread (lowest, highest). Two identical
    settings read 1.00 within the machine's noise. ``synchronize``: waits for the device's queued
    work (``train.hardware.synchronize`` on a GPU). ``clock``: wall time (what the bench reports), or
    the processor time of this process (``time.process_time``), which other processes' load moves less."""
    for step in (step_a, step_b):
        for _ in range(warmup):
            step(batch, targets)
    ratios, rates = [], {"a": [], "b": []}
    for index in range(rounds):
        order = (("a", step_a), ("b", step_b)) if index % 2 == 0 else (("b", step_b), ("a", step_a))
        found = {name: _timed(step, batch, targets, steps, synchronize, clock) for name, step in order}
        rates["a"].append(found["a"])
        rates["b"].append(found["b"])
        ratios.append(found["a"] / found["b"])
    return {"ratio": statistics.median(ratios), "low": min(ratios), "high": max(ratios), "rounds": rounds,
            "a_images_per_s": statistics.median(rates["a"]), "b_images_per_s": statistics.median(rates["b"])}
