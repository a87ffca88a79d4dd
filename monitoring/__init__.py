"""Monitoring on top of `hyperrec.monitor.trigger`: Evidently drift reports and snapshots (`reports`), the
dashboard project and its per-window snapshots (`dashboard`), and the UI launcher (`ui`, `make ui`)."""
