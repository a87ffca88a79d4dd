"""`hyperrec`: one command line in front of the whole platform (the Makefile calls it)."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

import hyperrec  # noqa: F401  (environment first)
from hyperrec.config import load_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
data_app = typer.Typer(no_args_is_help=True, help="Generate, load and validate data.")
features_app = typer.Typer(no_args_is_help=True, help="Feast: build tables, apply, materialize.")
pipeline_app = typer.Typer(no_args_is_help=True, help="Run or compile the training pipeline.")
app.add_typer(data_app, name="data")
app.add_typer(features_app, name="features")
app.add_typer(pipeline_app, name="pipeline")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: print a table, write JSON.")
app.add_typer(bench_app, name="bench")
model_app = typer.Typer(no_args_is_help=True, help="MLflow registry: promote, roll back, show the alias history.")
app.add_typer(model_app, name="model")
privacy_app = typer.Typer(no_args_is_help=True, help="GDPR/CCPA: erase a user everywhere, with an audit record.")
app.add_typer(privacy_app, name="privacy")
ab_app = typer.Typer(no_args_is_help=True, help="A/B tests over logged impressions.")
app.add_typer(ab_app, name="ab")
auth_app = typer.Typer(no_args_is_help=True, help="API keys and user tokens for the model server.")
app.add_typer(auth_app, name="auth")
console = Console()
if not console.is_terminal:  # piped or logged (CI, `make demo > log`): rich would wrap tables at 80 columns
    console = Console(width=140)

HomeOpt = typer.Option(None, "--home", help="workspace directory (default $HYPERREC_HOME or ./var)")
WorldOpt = typer.Option(None, "--world", help="world folder (default HOME/data/world), or db:world: the one "
                                               "published in HYPERREC_DATABASE_URL (`hyperrec data publish`)")
OUT_HELP = "the JSON file to write"


def _world_dir(home: Path | None, world: Path | None) -> Path:
    return world or load_settings(home).data_dir / "world"


@data_app.command("generate")
def data_generate(
    out: Path | None = typer.Option(None, help="output folder (default HOME/data/world)"),
    users: int = typer.Option(2_000, help="users in the world"),
    items: int = typer.Option(1_000, help="catalog items"),
    days: int = typer.Option(30, help="days of history"),
    events: int = typer.Option(200_000, help="approximate number of events"),
    seed: int = typer.Option(42, help="random seed: the same seed writes the same world"),
    home: Path | None = HomeOpt,
):
    """Write a synthetic world (users, items, events, ground-truth tastes), deterministic by seed."""
    from hyperrec.steps import generate_step

    world = generate_step(load_settings(home), out or _world_dir(home, None), console,
                          users=users, items=items, days=days, events=events, seed=seed)
    console.print(f"{len(world.users):,} users, {len(world.items):,} items, {len(world.events):,} events")


@data_app.command("load-movielens")
def data_load_movielens(path: Path = typer.Argument(..., help="a MovieLens folder (100K or latest format)"),
                        out: Path | None = typer.Option(None, help="output folder (default HOME/data/world)"),
                        home: Path | None = HomeOpt):
    """Read MovieLens (100K or latest format) into the hyperrec schemas."""
    from hyperrec.data.movielens import load_movielens
    from hyperrec.data.world import save_world

    world = load_movielens(path)
    dest = save_world(world, out or _world_dir(home, None))
    console.print(f"{world.meta['source']}: {len(world.users):,} users, {len(world.items):,} items, "
                  f"{len(world.events):,} events -> {dest}")


@data_app.command("import")
def data_import(mapping: Path = typer.Option(..., "--mapping", help="the mapping YAML (docs/your-data.md)"),
                out: Path | None = typer.Option(None, help="world folder to create or add to "
                                                           "(default HOME/data/world)"),
                base: Path | None = typer.Option(
                    None, help="folder the mapping's paths are relative to (default: the mapping file's folder)"),
                home: Path | None = HomeOpt):
    """Import your event log, catalog and profiles (CSV, TSV, Parquet, JSON Lines) into a world.

    Bad rows go to OUT/dead_letters.jsonl, counted per reason in OUT/import_report.json. Exits 2
    when the mapping or a file is unusable or no valid event remains."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

    from hyperrec.data.importer import ImportFailed, import_from_file
    from hyperrec.data.mapping import MappingError
    from hyperrec.privacy import Pseudonymizer, scrub_user_frame

    settings = load_settings(home)
    dest = out or _world_dir(home, None)
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        tasks: dict[str, int] = {}

        def progress(table: str, done: int, total: int) -> None:
            if table not in tasks:
                tasks[table] = bar.add_task(f"reading {table}", total=total)
            bar.update(tasks[table], completed=done, total=total)

        try:
            imported = import_from_file(mapping, dest, base, progress, prepare_users=lambda users: scrub_user_frame(
                users, Pseudonymizer.for_workspace(settings)))
        except (MappingError, ImportFailed) as exc:
            console.print(f"[red]import failed[/red]: {exc}")
            raise typer.Exit(2) from None
    report = imported.report
    ev = report["events"]
    console.print(f"{ev['rows_read']:,} event rows read in {report['seconds']:.1f} s "
                  f"({report['events_per_s']:,} events/s): {ev['rows_kept']:,} stored, "
                  f"{ev['duplicates']:,} duplicates, "
                  f"{ev['already_present']:,} already in the world, {ev['dead_lettered']:,} dead-lettered")
    for table in ("events", "items", "users"):
        for reason, n in ((report[table] or {}).get("dead_letters") or {}).items():
            rows = report[table]["sample_rows"][reason]
            more = ", ..." if n > len(rows) else ""
            console.print(f"  {table}: {n:,} x {reason} (rows {', '.join(map(str, rows))}{more})")
    console.print(f"{len(imported.users):,} users ({report['users_from_events_only']:,} from events only, consent "
                  f"{report['consent_default']}), {len(imported.items):,} items ({report['items_from_events_only']:,} "
                  f"from events only), {imported.events.num_rows:,} events -> {dest}")
    console.print(f"report: {dest / 'import_report.json'}; dead letters: {report['dead_letters_file']}")


@data_app.command("publish")
def data_publish(world: Path | None = WorldOpt, home: Path | None = HomeOpt):
    """Copy a world folder into PostgreSQL (HYPERREC_DATABASE_URL, schema `world`), replacing the
    one there: a cluster's roles then read `--world db:world` and an erasure reaches its one copy."""
    from hyperrec.data.world import load_world
    from hyperrec.data.world_db import publish_world

    settings = load_settings(home)
    if not settings.database_url:
        console.print("[red]data publish needs HYPERREC_DATABASE_URL[/red]")
        raise typer.Exit(2)
    source = _world_dir(home, world)
    rows = publish_world(settings.database_url, load_world(source))
    console.print(f"published {source} -> world schema: " + ", ".join(f"{k} {v:,}" for k, v in rows.items()))


@data_app.command("validate")
def data_validate(world: Path | None = WorldOpt, home: Path | None = HomeOpt):
    """Check every table of a world against the schemas; exit 1 naming each bad row."""
    from hyperrec.data.schemas import SchemaError
    from hyperrec.data.world_db import read_world

    try:
        w = read_world(load_settings(home), _world_dir(home, world))
    except SchemaError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    console.print(f"ok: {len(w.users):,} users, {len(w.items):,} items, {len(w.events):,} events")


@features_app.command("build")
def features_build(world: Path | None = WorldOpt, home: Path | None = HomeOpt):
    """Write offline feature tables, `feast apply`, and materialize to the online store."""
    from hyperrec.steps import feature_step

    feature_step(load_settings(home), _world_dir(home, world), console)


@features_app.command("materialize")
def features_materialize(end: str | None = typer.Option(None, help="ISO time to load up to (default: now)"),
                         home: Path | None = HomeOpt):
    """Load rows appended since the last load into the online store (materialize-incremental)."""
    from datetime import UTC, datetime

    from hyperrec.features.store import materialize_incremental

    until = datetime.fromisoformat(end) if end else datetime.now(UTC)
    materialize_incremental(load_settings(home), until)
    console.print(f"online store loaded up to {until.isoformat()}")


@features_app.command("feast", context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                                                 "help_option_names": []})
def features_feast(ctx: typer.Context):
    """Feast's own CLI (`hyperrec features feast -c feature_repo -f ... serve`) with the
    environment its yaml expands: the settings' and, with HYPERREC_DATABASE_URL, the
    PostgreSQL fields of the SQL registry and offline store (hyperrec.features.postgres)."""
    import os
    import sys

    from hyperrec.features.store import feast_env

    feast = str(Path(sys.executable).with_name("feast"))
    os.execve(feast, [feast, *ctx.args], feast_env(load_settings()))


@pipeline_app.command("run")
def pipeline_run(world: Path | None = WorldOpt,
                 epochs: int = typer.Option(6, help="most retrieval epochs (a validation split picks fewer)"),
                 k: int = typer.Option(20, help="list length the evaluation and the model gate score (recall@k)"),
                 warm_start: bool = typer.Option(False, help="start the towers from the champion's weights"),
                 endpoint: str = typer.Option("", help="a model server (http://host:port) the deploy step waits on "
                                                       "to serve the new version"),
                 summary: Path | None = typer.Option(None, help="write {version, blessed, ndcg@10, "
                                                              "popularity_ndcg@10, recall@K} as JSON here"),
                 merge_logged_events: bool = typer.Option(False, help="learn from the world plus every event "
                                                                      "logged since (the event log, the offline "
                                                                      "sink's events), as a cluster's runs do"),
                 home: Path | None = HomeOpt):
    """Run the training pipeline through kfp.local (SubprocessRunner, this venv)."""
    from pipelines.run import run_local

    result = run_local(load_settings(home), _world_dir(home, world), epochs=epochs, k=k, warm_start=warm_start,
                       endpoint=endpoint, merge_logged_events=merge_logged_events)
    if summary is not None:
        summary.parent.mkdir(parents=True, exist_ok=True)
        summary.write_text(json.dumps(result.summary(k), indent=2) + "\n")
    if result.stopped_at_data_gate:
        console.print(f"[red]stopped at the data gate[/red]: nothing trained or registered ({result.data_report})")
        if result.data_report:
            console.print(result.data_report.read_text())
        raise typer.Exit(1)
    verdict = "blessed -> @champion" if result.blessed else "rejected by the model gate, @champion unchanged"
    console.print(f"registered version {result.version} ({verdict}); deploy: {result.deploy_status}")


@pipeline_app.command("submit")
def pipeline_submit(host: str = typer.Option(..., help="KFP API, e.g. http://ml-pipeline.kubeflow:8888"),
                    home: str = typer.Option("/var/lib/hyperrec", help="HYPERREC_HOME inside the pods"),
                    world: str = typer.Option(..., help="world folder the pods read (a volume or bucket path)"),
                    cron: str | None = typer.Option(None, help='also a recurring run, e.g. "0 0 3 * * *"'),
                    namespace: str | None = typer.Option(None, help="KFP namespace (multi-user Kubeflow); "
                                                                    "default: the client's")):
    """Compile the pipeline and submit it to Kubeflow (kfp.Client): a run, optionally recurring."""
    import tempfile

    from pipelines.run import compile_pipeline, submit

    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(Path(tmp) / "hyperrec-training.yaml")
        console.print(submit(host, package, home, world, cron=cron, namespace=namespace))


@pipeline_app.command("compile")
def pipeline_compile(out: Path = typer.Option(Path("var/pipeline.yaml"), help="where to write the IR YAML")):
    """Compile the training pipeline to KFP IR YAML (what a Kubeflow cluster runs)."""
    from pipelines.run import compile_pipeline

    console.print(f"wrote {compile_pipeline(out)}")


@model_app.command("promote")
def model_promote(version: int = typer.Argument(..., help="the registered model version to serve"),
                  reason: str = typer.Option(..., help="why: recorded in the alias history"),
                  home: Path | None = HomeOpt):
    """Point @champion at VERSION (e.g. a rejected or challenger version, by hand), once it
    has loaded and passed the model server's checks here; refused (exit 1) otherwise."""
    from hyperrec.registry.model_registry import promote

    settings = load_settings(home)
    with _refusal_exits(settings):
        entry = promote(settings, version, f"promote: {reason}")
    console.print(f"@champion -> v{entry['version']} (was v{entry['previous']})")


@model_app.command("rollback")
def model_rollback(reason: str = typer.Option(..., help="why: recorded in the alias history"),
                   home: Path | None = HomeOpt):
    """Move @champion back to the version it pointed at before, once that version has loaded
    and passed the model server's checks here; refused (exit 1) otherwise."""
    from hyperrec.registry.model_registry import rollback

    settings = load_settings(home)
    with _refusal_exits(settings):
        entry = rollback(settings, reason)
    console.print(f"@champion -> v{entry['version']} (was v{entry['previous']})")


@contextmanager
def _refusal_exits(settings):
    """A version @champion must not move to (or no version to move to): say why, exit 1."""
    from rich.markup import escape

    from hyperrec.registry.model_registry import champion_version

    try:
        yield
    except ValueError as exc:  # RefusedVersion, or nothing to roll back to
        current = champion_version(settings)
        console.print(f"[red]refused[/]: {escape(str(exc))}; @champion stays at "
                      f"{'nothing' if current is None else f'v{current}'}", soft_wrap=True, highlight=False)
        raise typer.Exit(1) from None


@model_app.command("history")
def model_history(home: Path | None = HomeOpt):
    """Every move of @champion: version, previous, when, why."""
    from hyperrec.registry.model_registry import alias_history

    table = Table(title="@champion history")
    for col in ("at", "version", "previous", "reason"):
        table.add_column(col)
    for h in alias_history(load_settings(home)):
        table.add_row(h["at"], str(h["version"]), str(h["previous"]), h["reason"])
    console.print(table)


@bench_app.command("features")
def bench_features_cmd(out: Path = typer.Option(Path("var/bench/features.json"), help=OUT_HELP),
                       lookups: int = typer.Option(200, help="timed online lookups per store"),
                       candidates: int = typer.Option(200, help="items read with each recommend-shaped lookup"),
                       events: int = typer.Option(200_000, help="events in the generated world"),
                       home: Path | None = HomeOpt):
    """Online lookup latency (SQLite vs Redis) and event -> online freshness."""
    from hyperrec.bench.features import bench_features

    result = bench_features(load_settings(home), console, events=events, lookups=lookups, candidates=candidates)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    console.print(f"wrote {out}")


@bench_app.command("index")
def bench_index_cmd(out: Path = typer.Option(Path("var/bench/index.json"), help=OUT_HELP),
                    sizes: str = typer.Option("10000,100000,1000000", help="catalog sizes, comma-separated"),
                    dim: int = typer.Option(64, help="embedding dimension"),
                    queries: int = typer.Option(1000, help="timed queries per catalog size")):
    """Exact vs approximate (FAISS IVF) candidate index on generated catalogs: recall@100
    against brute force and per-query latency."""
    from hyperrec.bench.index import bench_index, print_index_table

    rows = bench_index(sizes=[int(s) for s in sizes.split(",")], dim=dim, queries=queries, progress=console.log)
    print_index_table(rows, console)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "dim": dim, "queries": queries}, indent=2))
    console.print(f"wrote {out}")


@bench_app.command("quality")
def bench_quality_cmd(path: Path = typer.Option(..., help="a MovieLens folder (100K or latest format)"),
                      format: str | None = typer.Option(None, "--format", help="ml-100k or ml-latest (checked)"),
                      out: Path = typer.Option(Path("var/bench/quality.json"), help=OUT_HELP),
                      epochs: int = typer.Option(6, help="most retrieval epochs (a validation split picks fewer)"),
                      home: Path | None = HomeOpt):
    """Baselines (popularity, item-kNN, EASE, iALS) and the hyperrec two-tower on real data,
    under the evaluation protocol."""
    from hyperrec.bench.quality import bench_quality

    result = bench_quality(path, console, format, load_settings(home), epochs)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    console.print(f"wrote {out}")


@bench_app.command("serving")
def bench_serving_cmd(out: Path = typer.Option(Path("var/bench/serving.json"), help=OUT_HELP),
                      home: Path = typer.Option(Path("var/bench-serving"), help="workspace for the 100k-item catalog"),
                      seconds: int = typer.Option(10, help="seconds per load run"),
                      rate: float = typer.Option(500.0, help="open-loop request rate (requests/s)"),
                      workers: int = typer.Option(2, help="hyperrec server processes (the naive anchor stays one)")):
    """The full request path over a generated 100k-item catalog vs the naive per-request
    KServe path (one BruteForce SavedModel call), side by side; swap under load."""
    from hyperrec.bench.serving import run

    run(load_settings(home), out, console, seconds=seconds, rate=rate, workers=workers)
    console.print(f"wrote {out}")


@bench_app.command("import")
def bench_import_cmd(out: Path = typer.Option(Path("var/bench/import.json"), help=OUT_HELP),
                     events: int = typer.Option(1_000_000, help="events in the generated CSV export")):
    """`hyperrec data import` on a generated CSV export (own column and type names, unix seconds,
    0.1% bad rows): events/s, wall time and peak memory of the command."""
    from hyperrec.bench.data_import import main

    main(out, events)
    console.print(f"wrote {out}")


@bench_app.command("freshness")
def bench_freshness_cmd(out: Path = typer.Option(Path("var/bench/freshness.json"), help=OUT_HELP),
                        home: Path = typer.Option(Path("var/bench-serving"), help="the serving bench's workspace"),
                        users: int = typer.Option(60, help="users whose event -> changed list is timed"),
                        ingest_s: float = typer.Option(10.0, help="seconds of the POST /v1/events throughput run")):
    """Event -> changed recommendations (server + stream processor, each its own process) and
    durable ingestion throughput on POST /v1/events."""
    from hyperrec.bench.freshness import run

    run(load_settings(home), out, console, users=users, ingest_s=ingest_s)
    console.print(f"wrote {out}")


@bench_app.command("detection")
def bench_detection_cmd(out: Path = typer.Option(Path("var/bench/detection.json"), help=OUT_HELP),
                        windows: int = typer.Option(200, help="same-distribution one-day windows (false alarms)"),
                        seed: int = typer.Option(0, help="random seed of the simulator")):
    """Drift trigger on a taste simulator: false alarms over same-distribution windows, and
    requests from an injected taste shift until the trigger fires."""
    from hyperrec.bench.detection import run

    run(out, windows=windows, seed=seed, console=console)
    console.print(f"wrote {out}")


@bench_app.command("cluster")
def bench_cluster_cmd(out: Path = typer.Option(Path("var/bench/cluster.json"), help=OUT_HELP),
                      root: Path = typer.Option(Path("var/bench-cluster"), help="the roles' folders (emptied first)"),
                      traffic_s: float = typer.Option(60.0, help="seconds of event traffic (kills on the way)"),
                      rate: float = typer.Option(200.0, help="predict requests/s over both servers together")):
    """A cluster in a box: 2 model servers, 2 stream consumers, the offline sink, the monitor
    and a retrain through the pipeline, each its own process and folder, against real
    PostgreSQL, Redis, Kafka and an MLflow server; kills a consumer and a server mid-stream,
    erases a user; writes servers, consumers, shared_paths, events_lost, duplicates_applied,
    retrain_saw_new_items, erasure_remnants, p99_ms_at_200rps."""
    from hyperrec.bench.cluster import run

    run(root.resolve(), out, console, traffic_s=traffic_s, rate=rate)
    console.print(f"wrote {out}")


@bench_app.command("faults")
def bench_faults_cmd(out: Path = typer.Option(Path("var/bench/faults.json"), help=OUT_HELP),
                     home: Path = typer.Option(Path("var/bench-faults"), help="its own workspace (emptied first)")):
    """A hostile client's probes (auth, impersonation, nested and malformed bodies, locked
    and deleted logs, OIP clients) against a live server and stream processor; writes
    probes, failed, server_5xx, events_lost, stream_crashes, impersonation_accepted."""
    from hyperrec.bench.faults import run

    result = run(home, out, console)
    console.print(f"wrote {out}")
    if result["failed"]:
        raise typer.Exit(1)


@bench_app.command("report")
def bench_report_cmd(bench_dir: Path = typer.Option(Path("var/bench"), help="where the benches wrote their JSON"),
                     out: Path = typer.Option(Path("BENCHMARKS.md"), help="the Markdown file to write")):
    """BENCHMARKS.md from the benches' JSON: machine, date, each measure beside its target or anchor."""
    from hyperrec.bench.markdown import write

    console.print(f"wrote {write(bench_dir, out)}")


@bench_app.command("warm-start")
def bench_warm_start_cmd(out: Path = typer.Option(Path("var/bench/warm_start.json"), help=OUT_HELP),
                         home: Path = typer.Option(Path("var/bench-warm"), help="workspace of its own"),
                         epochs: int = typer.Option(6, help="most epochs of the champion and the scratch retrain"),
                         fine_tune_epochs: int = typer.Option(2, help="epochs of the warm-started retrain")):
    """Retrain from the champion's weights vs from scratch, evaluated on interactions the
    champion never saw; training time and quality side by side."""
    from hyperrec.bench.warmstart import bench_warm_start

    bench_warm_start(load_settings(home), console, out, epochs=epochs, fine_tune_epochs=fine_tune_epochs)
    console.print(f"wrote {out}")


@app.command()
def serve(port: int | None = typer.Option(None, help="HTTP port (default $HYPERREC_PORT or 8080)"),
          home: Path | None = HomeOpt,
          as_of: str | None = typer.Option(None, help="ISO time to judge feature freshness at (simulated worlds)"),
          workers: int = typer.Option(1, help="server processes on the port (serving/workers.py)"),
          host: str = typer.Option("127.0.0.1", help="address to listen on (0.0.0.0: every interface)"),
          auth: str = typer.Option("auto", help="auto (on unless HOST is loopback), on or off: `hyperrec auth`")):
    """Run the KServe model server in the foreground (Ctrl-C stops it)."""
    import os
    import sys

    settings = load_settings(home)
    http_port = port or settings.server_port
    args = [sys.executable, "-m", "serving", "--home", str(settings.home), "--http_port", str(http_port),
            "--workers", str(workers), "--host", host, "--auth", auth]
    os.execv(sys.executable, args + (["--as_of", as_of] if as_of else []))


@auth_app.command("create-key")
def auth_create_key(name: str = typer.Argument(..., help="what the key is for, e.g. site-backend"),
                    scope: list[str] = typer.Option(..., "--scope", help="recommend, ingest, feedback or admin; "
                                                    "repeat for several"),
                    home: Path | None = HomeOpt):
    """Create an API key with SCOPEs (printed once; only its hash is stored)."""
    from hyperrec.online.access import open_authenticator

    try:
        secret = open_authenticator(load_settings(home).home).keys.create(name, scope)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    print(secret)


@auth_app.command("revoke")
def auth_revoke(name: str = typer.Argument(..., help="the key's name"), home: Path | None = HomeOpt):
    """Revoke an API key (a running server stops accepting it within a second)."""
    from hyperrec.online.access import open_authenticator

    if not open_authenticator(load_settings(home).home).keys.revoke(name):
        console.print(f"[red]no key named {name}[/]")
        raise typer.Exit(1)


@auth_app.command("list")
def auth_list(home: Path | None = HomeOpt):
    """The API keys' names and scopes (never their secrets)."""
    from hyperrec.online.access import open_authenticator

    console.print_json(data=open_authenticator(load_settings(home).home).keys.names())


@auth_app.command("user-token")
def auth_user_token(user_id: str = typer.Argument(..., help="the user the token acts as"),
                    ttl_s: int = typer.Option(3600, help="seconds until it expires"),
                    home: Path | None = HomeOpt):
    """A signed token (JWT, HS256 with the workspace's secret) that acts only as USER_ID:
    their lists, their events, their feedback. The site's login service mints the same."""
    from hyperrec.online.access import open_authenticator

    print(open_authenticator(load_settings(home).home, create_secret=True).tokens.issue(user_id, ttl_s=ttl_s))


@privacy_app.command("erase")
def privacy_erase(user_id: str = typer.Argument(..., help="the user to erase"),
                  reason: str = typer.Option(..., help="why (a ticket id): kept in the audit record"),
                  home: Path | None = HomeOpt):
    """Remove USER_ID from the event log and its dead letters, the impression log, the
    offline and online feature stores, the recommendation cache, every data file under home
    and the registered models (their user towers rebuilt without the id); later events and
    lists of the user are dropped. Needs HYPERREC_PII_KEY (the audit stores a keyed token,
    not the id). docs/privacy.md has the whole list."""
    from hyperrec.privacy import erase_user
    from hyperrec.privacy.db import ErasureBusy

    try:
        report = erase_user(load_settings(home), user_id, reason)
    except ErasureBusy as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    console.print_json(data={"user_token": report.user_token, "status": report.status, "removed": report.removed})


@ab_app.command("report")
def ab_report(impressions: Path | None = typer.Option(None, help="parquet or CSV: user_id, arm, clicked, converted "
                                                                "(default: the server's impression + event logs)"),
              control: str = typer.Option("control", help="the control arm's name"),
              metric: str = typer.Option("clicked", help="clicked | converted"),
              alpha: float = typer.Option(0.05, help="significance level (family-wise, Holm)"),
              min_lift: float = typer.Option(0.05, help="smallest relative lift worth finding"),
              home: Path | None = HomeOpt):
    """Per-arm rates with confidence intervals, a two-proportion z-test (Holm-corrected for
    several arms), the Bayesian probability to beat control, and the verdict."""
    import pandas as pd

    from hyperrec.experiments.abtest import report

    if impressions is not None:
        frame = pd.read_parquet(impressions) if impressions.suffix == ".parquet" else pd.read_csv(impressions)
    else:
        from hyperrec.data.eventlog import EventLog
        from hyperrec.data.impressions import ImpressionLog
        from hyperrec.monitor.traffic import attribute, shown_items

        settings = load_settings(home)
        served = shown_items(ImpressionLog(settings.impression_log).read())
        frame = attribute(served[served["policy"] == "personalized"],
                          EventLog(settings.event_log).read(0, limit=2**62)[1])
        frame = frame.rename(columns={"purchased": "converted"})
    console.print(report(frame, control=control, metric=metric, alpha=alpha, min_detectable_lift=min_lift))


@app.command()
def stream(home: Path | None = HomeOpt,
           kafka: str = typer.Option("", help="bootstrap servers: consume the Kafka topic instead of the local log"),
           topic: str = typer.Option("hyperrec.events", help="with --kafka: the typed event topic"),
           group: str = typer.Option("hyperrec-online-features",
                                     help="with --kafka: consumer group ('' = partition 0, offsets in the log)"),
           experiment: str = typer.Option("rerank", help="the server's --experiment: its real-time-off arm's users "
                                                         "are skipped"),
           ready_file: Path | None = typer.Option(None, help="local log: created once the history is folded and "
                                                             "new events are tailed"),
           new_log: bool = typer.Option(False, "--new-log", help="local log: accept an event log other than the one "
                                                                 "followed before (it was deleted or replaced)"),
           journal: Path | None = typer.Option(None, help="with --kafka and a group: record the event ids of every "
                                                          "fold here (JSON lines; an exactly-once audit)")):
    """Run the stream processor in the foreground: events (POSTed to the server's /v1/events,
    or from Kafka) -> windowed features and recent items -> the online store (Ctrl-C stops it)."""
    from hyperrec.online.serving_path import EXPERIMENTS

    settings = load_settings(home)
    if experiment not in EXPERIMENTS:
        raise typer.BadParameter(f"unknown experiment {experiment!r}; known: {sorted(EXPERIMENTS)}")
    chosen = EXPERIMENTS[experiment]
    batch_only = chosen.batch_only if any(not arm.realtime for arm in chosen.arms.values()) else None
    if kafka:
        from hyperrec.features.kafka_source import run as run_kafka

        run_kafka(settings, kafka, topic, group or None, log=console.print, batch_only=batch_only, journal=journal)
    else:
        from hyperrec.data.eventlog import LogUnavailable
        from hyperrec.features.stream import run

        try:
            run(settings, log=console.print, batch_only=batch_only, ready_file=ready_file, new_log=new_log)
        except LogUnavailable as exc:
            console.print(f"[red]stream processor stopped: {exc}[/]")
            raise typer.Exit(3) from None


@app.command()
def sink(home: Path | None = HomeOpt,
         kafka: str = typer.Option(..., help="bootstrap servers of the Kafka cluster (host:port[,...])"),
         topic: str = typer.Option("hyperrec.events", help="the typed event topic"),
         group: str = typer.Option("hyperrec-offline-sink", help="consumer group (its own: apart from the stream's)"),
         ready_file: Path | None = typer.Option(None, help="created once the sink holds partitions of the topic")):
    """Run the offline sink in the foreground: Kafka events -> parquet files per hour under
    HYPERREC_HOME/data/events, offsets committed after each file is durable; a retrain's
    snapshot of the world includes them (Ctrl-C stops it)."""
    from hyperrec.data.offline_sink import run as run_sink

    run_sink(load_settings(home), kafka, topic, group, log=console.print, ready_file=ready_file)


@app.command()
def monitor(home: Path | None = HomeOpt,
            once: bool = typer.Option(True, "--once/--loop", help="one pass (a CronJob), or a pass every --every"),
            every: float = typer.Option(3600.0, help="with --loop: seconds between passes"),
            window_hours: float = typer.Option(24.0, help="the current window"),
            reference_hours: float = typer.Option(24.0, help="the champion's first hours of traffic: the reference"),
            submit: bool = typer.Option(True, help="start a retraining run when the trigger fires"),
            kfp_host: str = typer.Option("", envvar="KF_PIPELINES_ENDPOINT",
                                         help="cluster: submit to this KFP API instead of a local retrain"),
            package: Path | None = typer.Option(None, help="cluster: a compiled pipeline (default: compile this "
                                                           "code's pipeline)"),
            world_dir: str = typer.Option("db:world", help="cluster: the pipeline's world_dir (default: the world "
                                                            "published in PostgreSQL)")):
    """Served traffic vs the champion's reference: drift and outcome checks, the retrain
    decision (with its safeguards) and the run it starts, hit rate, embedding drift, index
    recall; a dashboard snapshot per pass (`make ui`)."""
    import time as _time

    from hyperrec.training.retrain import KfpRetrain, LocalRetrain
    from monitoring.job import run_once

    settings = load_settings(home)
    submitter = None
    if submit:
        submitter = KfpRetrain(kfp_host, package, str(settings.home), world_dir) if kfp_host else LocalRetrain(settings)
    while True:
        report = run_once(settings, submitter, window_s=window_hours * 3600, reference_s=reference_hours * 3600)
        console.print_json(json.dumps(report, default=float))
        if once:
            return
        _time.sleep(every)


@app.command()
def retrain(run_id: str = typer.Option(..., "--run-id", help="the monitor's id for this run (its record and logs)"),
            epochs: int = typer.Option(6, help="most retrieval epochs"), home: Path | None = HomeOpt):
    """One retraining run (what `monitor` starts in embedded mode): world + logged events ->
    snapshot -> feature store -> training pipeline (kfp.local) -> the model gate decides."""
    from hyperrec.training.retrain import run

    outcome = run(load_settings(home), run_id, epochs=epochs, console=console)
    console.print_json(json.dumps(outcome, default=str))


@app.command()
def recommend(user_ids: list[str] = typer.Argument(..., help="one or more user ids"),
              k: int = typer.Option(10, help="items per list"),
              port: int = typer.Option(8080, help="the local server's HTTP port")):
    """Ask a running server for recommendations (v1 protocol) and print them as JSON."""
    from serving.launch import recommend as ask

    console.print_json(json.dumps(ask(port, user_ids, k)))


@app.command()
def demo(users: int = typer.Option(2_000, help="users in the generated world"),
         items: int = typer.Option(1_000, help="catalog items"),
         days: int = typer.Option(14, help="days of history before the live loop"),
         events: int = typer.Option(200_000, help="approximate number of history events"),
         epochs: int = typer.Option(6, help="most retrieval epochs of each training run"),
         port: int = typer.Option(8765, help="the model server's HTTP port"),
         sim_days: float = typer.Option(10.5, help="simulated days of the live loop (tastes drift after day 1)"),
         lists_per_day: int = typer.Option(0, help="0: the history's traffic intensity"),
         step_hours: float = typer.Option(6.0, help="simulated hours between monitoring passes"),
         max_retrains: int = typer.Option(3, help="retraining runs carried out (later firings are only recorded)"),
         drift_categories: int = typer.Option(0, help="categories the drifting users turn to (0: each user any)"),
         feedback: bool = typer.Option(True, help="the server's feedback stages (hyperrec.online.feedback)"),
         home: Path | None = HomeOpt):
    """The whole story: data -> Feast -> kfp.local training -> MLflow -> KServe -> simulated
    users whose tastes drift -> monitoring -> retraining -> swap -> CTR plot."""
    from hyperrec.demo.closed_loop import LoopConfig
    from hyperrec.demo.story import run_demo

    loop = LoopConfig(days=sim_days, lists_per_day=lists_per_day or None, step_hours=step_hours, epochs=epochs,
                      max_retrains=max_retrains, drift_categories=drift_categories or None, feedback=feedback)
    run_demo(load_settings(home), console, users=users, items=items, days=days, events=events,
             epochs=epochs, port=port, loop=loop)


@app.command("first-hours")
def first_hours(spans: int = typer.Option(8, help="6-hour spans after the first drift begins"),
                home: Path | None = HomeOpt):
    """After `hyperrec demo`: what the drifted users' own evidence told the platform, span by
    span, against what it served, and the ceilings of any list built from that evidence
    (reads the simulator's truth; hyperrec.demo.first_hours)."""
    from hyperrec.data.world import load_world
    from hyperrec.demo.first_hours import from_home

    settings = load_settings(home)
    result = from_home(settings, load_world(settings.data_dir / "world", validate=False), spans)
    console.print("hidden P(click) of the top 5 the day before the drift: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in result["before"].items()))
    console.print(result["spans"].round(3).to_string(index=False))


if __name__ == "__main__":
    app()
