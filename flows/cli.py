"""`nst grid run|report|list`: the experiment-grid commands (Prefect and MLflow imported lazily)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

DEFAULT_FILE = "experiments.yaml"


def add_commands(sub) -> None:
    p = sub.add_parser("grid", help="run experiment grids from experiments.yaml and compare them",
                       description="Experiment grids: Prefect runs the cells, MLflow records them.")
    gsub = p.add_subparsers(dest="grid_command", required=True, metavar="GRID_COMMAND")

    r = gsub.add_parser("run", help="run the missing cells of a grid, then write its report",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    r.add_argument("file", nargs="?", default=DEFAULT_FILE, help="experiments file")
    r.add_argument("--grid", required=True, help="grid name (see `nst grid list`)")
    r.add_argument("--dry-run", action="store_true", help="print the cells and which would be skipped; run nothing")
    r.add_argument("--workers", type=int, help="cells at a time (default: one per GPU, else 1 on CPU)")
    r.add_argument("--batch", type=int, metavar="N",
                   help="optimise up to N cells of one shape together (default: the grid's `batch`, else 1)")
    r.add_argument("--devices", nargs="+", help="explicit devices, one running cell each (e.g. cuda:0 cuda:1)")
    r.add_argument("--executor", choices=("local", "deployment"), default="local",
                   help="local threads, or runs of the nst-cell deployment on a work pool (fleet)")
    r.add_argument("--deployment", default="nst-cell/nst-cell", help="deployment for --executor deployment")
    r.add_argument("--reports", help="reports folder (default ./reports, or $NST_REPORTS)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.add_argument("--verbose", action="store_true", help="show Prefect's INFO logs")
    r.set_defaults(func=cmd_run)

    rp = gsub.add_parser("report", help="rebuild a grid's tables and contact sheet from MLflow")
    rp.add_argument("--grid", required=True)
    rp.add_argument("--file", help="experiments file: restrict to its current cells and use its sheet layout")
    rp.add_argument("--reports", help="reports folder (default ./reports)")
    rp.add_argument("--rescore", metavar="EVALUATOR", choices=("fixed", "robust"),
                    help="first score the finished cells with this evaluator (fixed or robust; from their logged "
                         "output.png and inputs, no cell runs again; cells it already scored are skipped)")
    rp.add_argument("--device", default="cpu", help="device of the evaluator for --rescore")
    rp.set_defaults(func=cmd_report)

    ls = gsub.add_parser("list", help="list the grids of an experiments file")
    ls.add_argument("file", nargs="?", default=DEFAULT_FILE)
    ls.set_defaults(func=cmd_list)

    from flows import server

    server.add_commands(sub)  # `nst server start|stop|status`: a Prefect UI that outlives the grids

    rr = sub.add_parser("reproduce", help="regenerate the source reports' figures into reports/REPORT.md",
                        description="Run the grids behind each report figure (Prefect, tracked in MLflow), draw "
                                    "the figures and tables, and write reports/REPORT.md.")
    which = rr.add_mutually_exclusive_group(required=True)
    which.add_argument("--figure", action="append", metavar="NAME", help="a figure (repeatable; see --list)")
    which.add_argument("--all", action="store_true", help="every figure whose method exists here")
    which.add_argument("--list", action="store_true", help="list the figures and whether they can be made")
    rr.add_argument("--quick", action="store_true", help="small CPU variant (minutes on 2 cores)")
    rr.add_argument("--file", default=DEFAULT_FILE, help="experiments file with the figures section")
    rr.add_argument("--workers", type=int, help="cells at a time (default: one per GPU, else 1 on CPU)")
    rr.add_argument("--reports", help="reports folder (default ./reports, or $NST_REPORTS)")
    rr.add_argument("--quiet", action="store_true", help="no progress bars")
    rr.add_argument("--verbose", action="store_true", help="show Prefect's INFO logs")
    rr.set_defaults(func=cmd_reproduce)


def _env(verbose: bool = False) -> None:
    from tasks.settings import OFFLINE_ENV

    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from flows.server import use_if_running

    use_if_running()  # `nst server start`'s Prefect server while it answers, else Prefect's ephemeral mode


class _NoRunFailureTracebacks(logging.Filter):
    """Keeps Prefect's flow/task-run errors off the terminal (they still reach Prefect's API and UI).

    The exception that failed the run reaches `nst.cli.main`, which prints it as one line; Prefect's own
    "Encountered exception during execution" record would put a traceback in front of that line.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith(("prefect.flow_runs", "prefect.task_runs"))
                    and record.levelno >= logging.ERROR)


def _quiet_run_failures(args: argparse.Namespace) -> None:
    """Called just before a flow starts, after every Prefect setting is in the environment (Prefect reads its
    settings when first imported)."""
    if getattr(args, "verbose", False):
        return
    import prefect.main  # noqa: F401  (configures Prefect's logging: its console handler sits on the root logger)

    for h in logging.getLogger().handlers:
        if not any(isinstance(f, _NoRunFailureTracebacks) for f in h.filters):
            h.addFilter(_NoRunFailureTracebacks())


def cmd_list(args: argparse.Namespace) -> int:
    from nst.experiments import expand, load_experiments

    exp = load_experiments(args.file)
    for name, spec in exp.grids.items():
        g = expand(exp, name)
        axes = ", ".join(f"{a}({len({c.labels.get(a) for c in g.cells})})" for a in g.axes) or "-"
        print(f"{name}: {len(g.cells)} cells; axes {axes}")
        if spec.description:
            print(f"    {spec.description}")
    return 0


def start_ephemeral_prefect() -> None:
    """Start Prefect's temporary server now, one process at a time per PREFECT_HOME.

    Two grid runs started together on a fresh PREFECT_HOME raced on its database migrations
    ("Application startup failed"); under a file lock the second one finds them done.  The flow
    then uses this server (Prefect keeps one per process).  Nothing to do with a real server.
    """
    if os.environ.get("PREFECT_API_URL"):
        return
    import fcntl

    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_HOME

    home = Path(PREFECT_HOME.value()).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".nst-server-start.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            SubprocessASGIServer().start()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def cmd_run(args: argparse.Namespace) -> int:
    _env(args.verbose)
    from tasks.settings import configure

    uri = configure()
    from flows.grid import plan

    # everything is validated here, before Prefect starts and before any work
    g, exp_id, done = plan(args.file, args.grid)
    from tasks.settings import reports_dir, writable_dir

    writable_dir(Path(args.reports) if args.reports else reports_dir(), "--reports")
    if args.dry_run:
        from nst.options import work

        for c in g.cells:
            mark = "skip (finished)" if c.cell_id in done else "run"
            print(f"{c.index:3d}  {c.cell_id}  {mark:15s}  {c.name}  [{c.method}, {c.config.backbone}, "
                  f"{c.config.size}px, {work(c.method, c.method_options, c.config.steps)}]")
            if mark == "run" and c.method not in ("fast", "video"):  # memory, time (nst.tiling), or why it cannot fit
                print(f"     {_estimate(c)}")
        print(f"grid {args.grid}: {len(g.cells)} cells, {sum(c.cell_id in done for c in g.cells)} would be skipped; "
              f"tracking {uri}")
        return 0
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.grid import grid_flow
    from tasks.devices import default_devices

    devices = args.devices or default_devices(args.workers)
    if args.workers and args.devices:
        devices = (args.devices * args.workers)[: max(args.workers, len(args.devices))]
    start_ephemeral_prefect()
    flow = grid_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=len(devices)))
    _quiet_run_failures(args)
    out = flow(str(Path(args.file).resolve()), args.grid, devices=devices, executor=args.executor,
               progress=not args.quiet, reports_dir=args.reports, deployment=args.deployment, batch=args.batch)
    failed = [r for r in out["results"] if r["status"] != "FINISHED"]
    rep = out["report"]
    elsewhere = sum(bool(r.get("elsewhere")) for r in out["results"])
    print(f"grid {args.grid}: {out['cells']} cells: {out['skipped']} skipped (finished before), "
          f"{len(out['results']) - len(failed)} finished"
          + (f" ({elsewhere} by another grid run)" if elsewhere else "") + f", {len(failed)} failed")
    for r in failed:
        print(f"  failed {r['cell_id']}: {r['error']}")
    for k in ("table.html", "table.md", "contact_sheet.png", "summary.md"):
        if k in rep:
            print(f"  {k:18s} {rep[k]}")
    print(f"  MLflow UI: mlflow ui --backend-store-uri {uri}   (experiment {out['experiment_id']}: "
          f"nst-grid/{args.grid}, parent run {out['parent_run_id']})")
    from tasks.mlflow_views import experiment_url

    print(f"             then {experiment_url(out['experiment_id'])}")
    api = os.environ.get("PREFECT_API_URL")
    print(f"  Prefect UI: {api[:-4] if api and api.endswith('/api') else api}" if api else
          "  Prefect: ran ephemerally (start `nst server start` first to keep a Prefect UI of the runs)")
    return 1 if failed else 0


def _estimate(cell) -> str:
    from nst.errors import NSTError
    from nst.tiling import content_hw, summary

    try:
        return "estimate: " + summary(cell.config, content_hw(cell.content, cell.config.size))
    except NSTError as exc:
        return f"refused: {exc}"
    except Exception as exc:  # an estimate must never stop a dry run
        return f"estimate unavailable ({type(exc).__name__}: {exc})"


def cmd_report(args: argparse.Namespace) -> int:
    _env()
    from tasks.settings import configure

    configure()
    from nst.errors import ConfigError
    from tasks import settings, tracking

    if tracking.experiment_id(args.grid, create=False) is None:
        raise ConfigError(f"grid '{args.grid}': no MLflow experiment '{tracking.experiment_name(args.grid)}' at "
                          f"{settings.tracking_uri()} (run `nst grid run` first)")
    if args.file:
        from nst import methods
        from nst.experiments import load_grid

        load_grid(args.file, args.grid, methods.names())
    from flows.report import report_flow

    _quiet_run_failures(args)
    out = report_flow(args.grid, args.file, args.reports, rescore=args.rescore, device=args.device)
    if "rescored" in out:
        r = out["rescored"]
        print(f"rescored with {r['evaluator']}: {len(r['scored'])} cells, {len(r['skipped'])} already scored, "
              f"{len(r['failed'])} failed" + "".join(f"\n  {k}: {v}" for k, v in r["failed"].items()))
    print(f"grid {args.grid}: {out['cells']} cells")
    for k, v in out["report"].items():
        print(f"  {k:18s} {v}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    _env(args.verbose)
    from tasks.settings import configure

    uri = configure()
    from flows.reproduce import availability

    available = availability(args.file, args.quick)  # validates every figure's grids before any work
    if args.list:
        from nst.experiments import load_experiments

        for name, spec in load_experiments(args.file).figures.items():
            state = "ok" if available[name] is None else f"cannot be made: {available[name]}"
            print(f"{name}: {spec.title} [grids {', '.join(spec.grids)}] {state}")
        return 0
    from flows.reproduce import reproduce_flow
    from tasks.devices import default_devices

    _quiet_run_failures(args)
    out = reproduce_flow(str(Path(args.file).resolve()), None if args.all else args.figure, args.quick,
                         devices=default_devices(args.workers), reports_dir=args.reports, progress=not args.quiet)
    print(f"made {len(out['figures'])} figures: {', '.join(out['figures'])}")
    for name, why in out["unavailable"].items():
        print(f"  not made: {name}: {why}")
    for line in out["failed_cells"]:
        print(f"  failed cell {line}")
    print(f"  report: {out['report']}")
    print(f"  MLflow UI: mlflow ui --backend-store-uri {uri}")
    return 0
