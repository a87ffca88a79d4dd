"""Evaluation: ranking metrics, cold-start slices and the model gate against baselines and
the champion."""
