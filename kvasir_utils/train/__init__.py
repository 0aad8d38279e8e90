"""Training and using the models: models and freeze readings, presets and device augmentation, the
hardware policy, the loop, checkpoints and their fingerprints, frozen-output reuse, evaluation and
Grad-CAM.

Imports data and analysis; never report or run.
"""
