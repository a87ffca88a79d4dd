"""Pipeline wiring (`training.py`) and the ways to run it (`run.py`)."""
