"""Fault soak: kill a small grid at random moments, then let it finish; nothing may be lost or run twice.

    python benchmarks/soak.py                      # 3 rounds x 4 kills, then the other faults
    python benchmarks/soak.py --rounds 1 --kills 2 --no-faults     # the short version the suite runs

Each round uses a fresh store (sqlite under a temporary NST_HOME): the grid is started K times and
each time killed after a random delay (SIGKILL, every fourth one SIGINT) somewhere between start-up,
target computation, optimisation, artifact logging and the report; then it runs to the end.  Checked
after every round: exactly one FINISHED run per cell, no run left RUNNING, no partial file (``*.tmp``)
in the reports folder or the artifact store, every logged PNG whole, and a complete table.

Other faults (``--faults``, default on): disk full (NST_HOME on a small tmpfs; needs root), an
unwritable reports folder, and the MLflow tracking server (on PostgreSQL) stopped for a few seconds
in the middle of a grid and started again.  Prints the counts at the end; exit 1 if a check failed.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NST = str(Path(sys.executable).parent / "nst")
GRID = """
grids:
  soak:
    settings: {{size: {size}, steps: {steps}, scales: []}}
    evaluate: true
    eval_resolution: 64
    intermediate_images: 2
    axes:
      content: [{images}/tubingen.jpg, {images}/chelsea.png]
      style: [{images}/starry_night.jpg, {images}/the_scream.jpg]
"""
CELLS = 4


def write_grid(folder: Path, size: int = 64, steps: int = 12) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "soak.yaml"
    path.write_text(GRID.format(size=size, steps=steps, images=ROOT / "nst" / "data" / "images"))
    return path


def grid_env(home: Path, tracking_uri: str | None = None) -> dict[str, str]:
    env = {**os.environ, "NST_HOME": str(home), "PREFECT_HOME": str(home / "prefect"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    for k in ("MLFLOW_TRACKING_URI", "NST_ARTIFACT_ROOT", "PREFECT_API_URL", "PREFECT_PROFILE"):
        env.pop(k, None)
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


class Grid(subprocess.Popen):
    """A `nst grid run` process whose output goes to files (a pipe nobody reads could block it)."""

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:  # type: ignore[override]
        self.wait(timeout=timeout)
        return self.out_path.read_text(), self.err_path.read_text()


def start_grid(exp: Path, env: dict[str, str], reports: Path) -> Grid:
    n = len(list(exp.parent.glob("grid-*.out")))
    out, err = exp.parent / f"grid-{n}.out", exp.parent / f"grid-{n}.err"
    with open(out, "w") as fo, open(err, "w") as fe:
        p = Grid([NST, "grid", "run", str(exp), "--grid", "soak", "--quiet", "--reports", str(reports)],
                 env=env, cwd=exp.parent, stdout=fo, stderr=fe, text=True)
    p.out_path, p.err_path = out, err
    return p


def check_store(tracking_uri: str, reports: Path, artifacts: Path | None, cells: int = CELLS) -> dict[str, int]:
    """The invariants after a grid finished; raises AssertionError naming the first one broken."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType
    from PIL import Image

    c = MlflowClient(tracking_uri)
    exp = c.get_experiment_by_name("nst-grid/soak")
    runs = c.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=5000)
    active = [r for r in runs if r.info.lifecycle_stage == "active"]
    finished = Counter(r.data.tags["cell_id"] for r in active if "cell_id" in r.data.tags
                       and r.info.status == "FINISHED")
    running = [r.info.run_id for r in active if r.info.status == "RUNNING"]
    assert len(finished) == cells and set(finished.values()) == {1}, f"FINISHED runs per cell: {dict(finished)}"
    assert not running, f"runs left RUNNING: {running}"
    partial = [p for d in (reports, artifacts) if d and d.exists() for p in d.rglob("*.tmp")]
    assert not partial, f"partial files: {partial[:5]}"
    pngs = 0
    for png in artifacts.rglob("*.png") if artifacts is not None and artifacts.exists() else []:
        with Image.open(png) as im:  # every image in the store, of any run, is whole
            im.load()  # raises on a truncated file
        pngs += 1
    table = (reports / "soak" / "table.csv").read_text()
    assert table.count("FINISHED") == cells, f"table: {table[:500]}"
    return {"runs": len(runs), "finished": sum(finished.values()), "pngs": pngs}


def artifact_dir(home: Path) -> Path:
    return home / "mlartifacts"


def soak_round(folder: Path, kills: int, rng: random.Random, budget_s: float) -> dict[str, int]:
    """One fresh store: `kills` interrupted runs at random moments, then one to the end, then the checks."""
    home, reports = folder / "home", folder / "reports"
    exp = write_grid(folder)
    env = grid_env(home)
    counts = Counter()
    for i in range(kills):
        p = start_grid(exp, env, reports)
        delay = rng.uniform(0.15, 1.0) * budget_s
        try:
            p.wait(timeout=delay)
            counts["ended before the kill"] += 1
            continue
        except subprocess.TimeoutExpired:
            pass
        sig = signal.SIGINT if i % 4 == 3 else signal.SIGKILL
        p.send_signal(sig)
        try:
            _, err = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:  # a SIGINT that did not stop it is a finding, then SIGKILL
            p.kill()
            _, err = p.communicate()
            counts["SIGINT ignored"] += 1
        if sig == signal.SIGINT:
            assert "Traceback" not in err, f"SIGINT gave a traceback:\n{err[-2000:]}"
            counts["SIGINT survived"] += 1
        else:
            counts["SIGKILL survived"] += 1
    p = start_grid(exp, env, reports)
    out, err = p.communicate(timeout=1800)
    assert p.returncode == 0, f"final run exited {p.returncode}:\n{out[-1500:]}\n{err[-2500:]}"
    assert "Traceback" not in err, err[-2500:]
    counts.update(check_store(f"sqlite:///{home / 'mlflow.db'}", reports, artifact_dir(home)))
    return dict(counts)


def timed_clean_run(folder: Path) -> float:
    home = folder / "home"
    exp = write_grid(folder)
    t0 = time.perf_counter()
    p = start_grid(exp, grid_env(home), folder / "reports")
    out, err = p.communicate(timeout=1800)
    assert p.returncode == 0, out[-1500:] + err[-2500:]
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- other faults


def fault_disk_full(folder: Path) -> str:
    """NST_HOME on a 4 MB tmpfs: the grid must stop with one line, leaving no run RUNNING."""
    mnt = folder / "tiny-disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True).returncode:
        return "disk full: skipped (tmpfs needs root)"
    try:
        home = mnt / "home"
        exp = write_grid(folder, size=96, steps=3)
        (mnt / "filler").write_bytes(b"\0" * (2 * 2**20))  # leave room for the store, not for the images
        env = {**grid_env(home), "PREFECT_HOME": str(folder / "prefect-full")}  # the store fills, not Prefect's
        p = start_grid(exp, env, folder / "reports-full")
        out, err = p.communicate(timeout=900)
        lines = [ln for ln in err.splitlines() if ln.startswith("nst: error") or "Traceback" in ln]
        assert "Traceback" not in err, err[-2500:]
        if p.returncode == 0:
            return "disk full: grid finished (the store fitted)"
        assert len(lines) == 1, err[-2500:]
        first_rc = p.returncode
        (mnt / "filler").unlink()  # space again: the same command finishes the grid
        p = start_grid(exp, env, folder / "reports-full")
        out2, err2 = p.communicate(timeout=900)
        assert p.returncode == 0, out2[-1500:] + err2[-2500:]
        check_store(f"sqlite:///{home / 'mlflow.db'}", folder / "reports-full", artifact_dir(home))
        return f"disk full: one line ({lines[0][:120]}), exit {first_rc}; after freeing space the grid finished"
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fault_unwritable_reports(folder: Path) -> str:
    blocker = folder / "a-file"
    blocker.write_text("not a folder")
    home = folder / "home-unwritable"
    exp = write_grid(folder)
    p = start_grid(exp, grid_env(home), blocker / "reports")
    out, err = p.communicate(timeout=300)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1 and "--reports" in lines[0], (p.returncode, err[-2000:])
    from mlflow import MlflowClient

    exp_ = MlflowClient(f"sqlite:///{home / 'mlflow.db'}").get_experiment_by_name("nst-grid/soak")
    assert exp_ is None or not MlflowClient(f"sqlite:///{home / 'mlflow.db'}").search_runs([exp_.experiment_id])
    return f"unwritable reports: refused before any work ({lines[0][:100]})"


def fault_server_stopped(folder: Path, outage_s: float = 8.0) -> str:
    """The grid's MLflow server (Postgres) stopped mid-grid for `outage_s`, then started on the same port."""
    sys.path.insert(0, str(ROOT / "tests"))
    import pytest  # services.py skips through pytest where there is no PostgreSQL

    from services import mlflow_server

    try:
        with mlflow_server(folder / "server") as server:
            exp = write_grid(folder, steps=25)
            reports = folder / "reports-server"
            p = start_grid(exp, grid_env(folder / "home-server", server.uri), reports)
            time.sleep(20)  # start-up and the first cell
            server.stop()
            time.sleep(outage_s)
            server.start()
            out, err = p.communicate(timeout=1800)
            assert "Traceback" not in err, err[-2500:]
            if p.returncode != 0:  # the outage outlasted the retries: one line, then a rerun finishes
                lines = [ln for ln in err.splitlines() if ln.startswith("nst: error")]
                assert len(lines) == 1, err[-2500:]
                p = start_grid(exp, grid_env(folder / "home-server", server.uri), reports)
                out, err = p.communicate(timeout=1800)
                assert p.returncode == 0, out[-1500:] + err[-2500:]
            counts = check_store(server.uri, reports, folder / "server" / "artifacts", CELLS)
            return (f"tracking server stopped {outage_s:.0f} s mid-grid: grid finished, {counts['finished']} cells "
                    "once each")
    except pytest.skip.Exception as exc:
        return f"tracking server stopped: skipped ({exc})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kills", type=int, default=4, help="interrupted runs per round")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--faults", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    totals: Counter = Counter()
    failures: list[str] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="nst-soak-") as tmp:
        tmp = Path(tmp)
        if args.rounds:
            budget = timed_clean_run(tmp / "clean")
            print(f"one uninterrupted grid run: {budget:.1f} s; kills fall at 15-100% of that")
        for r in range(args.rounds):
            try:
                counts = soak_round(tmp / f"round{r}", args.kills, rng, budget)
                totals.update(counts)
                totals["rounds checked"] += 1
                print(f"round {r}: {counts}")
            except AssertionError as exc:
                failures.append(f"round {r}: {exc}")
                print(f"round {r}: FAILED {exc}")
        if args.faults:
            for fault in (fault_unwritable_reports, fault_disk_full, fault_server_stopped):
                try:
                    notes.append(fault(tmp))
                    totals["faults tried"] += 1
                except AssertionError as exc:
                    failures.append(f"{fault.__name__}: {exc}")
            for n in notes:
                print(n)
    kills = totals["SIGKILL survived"] + totals["SIGINT survived"]
    print(f"soak: {kills} kills survived ({totals['SIGKILL survived']} SIGKILL, {totals['SIGINT survived']} SIGINT, "
          f"{totals['ended before the kill']} runs ended before their kill), "
          f"{totals['rounds checked']} rounds checked, "
          f"{totals['runs']} runs checked, {totals['pngs']} PNGs whole, {totals['faults tried']} faults tried, "
          f"{len(failures)} failures")
    for f in failures:
        print("  " + f)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
