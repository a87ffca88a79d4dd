"""Monitoring jobs on top of `hyperrec.monitor`: Evidently drift reports and snapshots (`reports`)."""
