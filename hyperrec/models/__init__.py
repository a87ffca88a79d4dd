"""Model builders (TFRS) and the non-neural baselines, behind the same scoring interface."""
