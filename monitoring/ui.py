"""`python -m monitoring.ui --workspace DIR --port P`: the monitoring dashboard in Evidently's UI.

Makes sure the project and its panels exist (`monitoring.dashboard.ensure_project`); when
the project holds no windows yet, seeds `--demo-days` synthetic days (`seed_demo`, ~1.5 s
a day; `--demo-days 0` leaves it empty); prints the project's URL; then runs Evidently's
own UI server on the workspace in this process, exactly what `evidently ui --workspace DIR
--host H --port P` does (`evidently.ui.service.app.get_config` + `run`; the server watches
the folder, so windows recorded while it runs appear on the next page load). Telemetry
is off (`DO_NOT_TRACK=true`) unless the caller set it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("DO_NOT_TRACK", "true")  # before Evidently reads it
    parser = argparse.ArgumentParser(prog="python -m monitoring.ui",
                                     description="Serve the hyperrec monitoring dashboard in Evidently's UI.")
    parser.add_argument("--workspace", default="var/monitoring/evidently",
                        help="Evidently workspace folder (`hyperrec monitor` writes <home>/monitoring/evidently)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--project", default=None, help="project name (default: hyperrec)")
    parser.add_argument("--demo-days", type=int, default=14,
                        help="synthetic days to seed when the project has no windows (0: none)")
    args = parser.parse_args(argv)

    from monitoring import dashboard

    project = args.project or dashboard.PROJECT
    project_id = dashboard.ensure_project(args.workspace, project)
    if args.demo_days > 0 and not dashboard.list_windows(args.workspace, project):
        print(f"workspace {args.workspace} has no windows: seeding {args.demo_days} synthetic days "
              f"(demo data, a taste shift two thirds in) ...", flush=True)
        started = time.monotonic()
        dashboard.seed_demo(args.workspace, days=args.demo_days, project=project)
        print(f"seeded in {time.monotonic() - started:.0f} s", flush=True)

    from evidently.ui.service.app import get_config, run

    config = get_config(host=args.host, port=args.port, workspace=args.workspace)
    print(f"Evidently UI, project {project!r}: http://{args.host}:{args.port}/projects/{project_id}", flush=True)
    run(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
