"""The fleet set-up for real on this machine: Postgres-backed MLflow and Prefect servers, a work pool,
two process workers, and a tiny grid fanned out as deployment runs.  Also checks docker/compose.yaml.

The commands are the ones docker/compose.yaml runs (`mlflow server ... --allowed-hosts`,
`prefect server start`, `prefect work-pool create`, `prefect deploy --prefect-file docker/prefect.yaml`,
`prefect worker start --pool ... --type process --limit 1`), on loopback ports with their own databases.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from nst.data import image
from services import free_port as _free_port
from services import psycopg as _psycopg
from services import psycopg2_connect, start_process, stop_processes
from services import wait_http as _wait_http

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- compose file


def test_compose_file_describes_the_fleet():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"prefect-server", "postgres", "mlflow", "minio", "worker"} <= set(services)
    # separate databases for Prefect and MLflow (both keep alembic_version)
    prefect_db = services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    mlflow_cmd = services["mlflow"]["command"]
    mlflow_db = mlflow_cmd[mlflow_cmd.index("--backend-store-uri") + 1]
    assert prefect_db.startswith("postgresql+asyncpg://") and mlflow_db.startswith("postgresql+psycopg2://")
    assert prefect_db.rsplit("/", 1)[1] != mlflow_db.rsplit("/", 1)[1]
    init = (ROOT / "docker" / "postgres-init.sql").read_text()
    for db in (prefect_db.rsplit("/", 1)[1], mlflow_db.rsplit("/", 1)[1]):
        assert f"CREATE DATABASE {db};" in init
    mounted = " ".join(services["postgres"]["volumes"])
    assert "postgres-init.sql:/docker-entrypoint-initdb.d/" in mounted
    # MLflow admits the compose service name and stores artifacts in the bucket created beforehand
    allowed = mlflow_cmd[mlflow_cmd.index("--allowed-hosts") + 1].split(",")
    assert "mlflow" in allowed and "mlflow:5000" in allowed
    bucket = mlflow_cmd[mlflow_cmd.index("--artifacts-destination") + 1]
    assert bucket.startswith("s3://")
    creators = [n for n, s in services.items() if "mc mb" in " ".join(map(str, s.get("command", [])))]
    assert creators and bucket[len("s3://"):] in " ".join(services[creators[0]]["command"])
    assert services["mlflow"]["depends_on"][creators[0]]["condition"] == "service_completed_successfully"
    # GPU worker: a reservation, and the same worker command the fleet test runs
    dev = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert dev["driver"] == "nvidia" and "gpu" in dev["capabilities"]
    assert services["worker"]["command"][:5] == ["prefect", "worker", "start", "--pool", "nst-gpu"]
    assert services["worker"]["environment"]["PREFECT_API_URL"].startswith("http://prefect-server:")
    assert services["worker"]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    # the deployment definition points at the cell flow
    dep = yaml.safe_load((ROOT / "docker" / "prefect.yaml").read_text())["deployments"][0]
    assert dep["entrypoint"] == "flows/grid.py:cell_flow"
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "cuda" in dockerfile.splitlines()[2].lower() and '".[grid]"' in dockerfile


# --------------------------------------------------------------------------- live fleet


@pytest.mark.slow
def test_grid_on_postgres_servers_with_two_process_workers(tmp_path: Path):
    conn = _psycopg()
    tag = uuid.uuid4().hex[:8]
    dbs = {"mlflow": f"nst_test_mlflow_{tag}", "prefect": f"nst_test_prefect_{tag}"}
    with conn.cursor() as cur:
        for db in dbs.values():
            cur.execute(f"CREATE DATABASE {db}")
    for n in ("tubingen.jpg", "starry_night.jpg", "the_scream.jpg"):
        shutil.copy(image(n), tmp_path / n)
    (tmp_path / "exp.yaml").write_text(
        "grids:\n  fleet:\n    settings: {size: 32, steps: 3}\n    evaluate: false\n    intermediate_images: 0\n"
        "    axes:\n      content: [tubingen.jpg]\n      style: [starry_night.jpg, the_scream.jpg]\n"
    )
    mport, pport = _free_port(), _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        "NST_HOME": str(tmp_path / "nst-home"),
        "NST_PROJECT_DIR": str(ROOT),
        "NST_WORK_POOL": f"nst-test-{tag}",
        "PREFECT_API_URL": f"http://127.0.0.1:{pport}/api",
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mport}",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "1",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",  # two workers share two cores
    }
    for k in ("PREFECT_PROFILE", "NST_ARTIFACT_ROOT"):
        env.pop(k, None)
    bindir = Path(sys.executable).parent
    procs: list[subprocess.Popen] = []
    logs = tmp_path / "logs"

    def start(name: str, args: list[str], extra: dict | None = None) -> subprocess.Popen:
        return start_process(name, args, {**env, **(extra or {})}, logs, procs, cwd=ROOT)

    try:
        start("mlflow", [str(bindir / "mlflow"), "server",
                         "--backend-store-uri", f"postgresql+psycopg2://postgres@127.0.0.1:5432/{dbs['mlflow']}",
                         "--artifacts-destination", (tmp_path / "artifacts").as_uri(),
                         "--host", "127.0.0.1", "--port", str(mport), "--workers", "1",
                         "--allowed-hosts", f"127.0.0.1:{mport},localhost:{mport}"])
        start("prefect-server", [str(bindir / "prefect"), "server", "start", "--host", "127.0.0.1",
                                 "--port", str(pport)],
              {"PREFECT_API_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{dbs['prefect']}",
               "PREFECT_API_URL": ""})
        _wait_http(f"http://127.0.0.1:{mport}/health", procs)
        _wait_http(f"http://127.0.0.1:{pport}/api/health", procs)

        def cli(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)

        pool = env["NST_WORK_POOL"]
        r = cli(str(bindir / "prefect"), "work-pool", "create", pool, "--type", "process")
        assert r.returncode == 0, r.stdout + r.stderr
        r = cli(str(bindir / "prefect"), "--no-prompt", "deploy", "--prefect-file", "docker/prefect.yaml", "--all")
        assert r.returncode == 0, r.stdout + r.stderr
        for i in range(2):
            start(f"worker{i}", [str(bindir / "prefect"), "worker", "start", "--pool", pool, "--type", "process",
                                 "--limit", "1", "--name", f"worker-{i}"])
        r = cli(str(bindir / "nst"), "grid", "run", str(tmp_path / "exp.yaml"), "--grid", "fleet",
                "--executor", "deployment", "--quiet", "--reports", str(tmp_path / "reports"))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "2 finished, 0 failed" in r.stdout, r.stdout

        # MLflow on Postgres: one parent, a FINISHED child per cell, artifacts in the server's store
        from mlflow import MlflowClient

        client = MlflowClient(env["MLFLOW_TRACKING_URI"])
        exp = client.get_experiment_by_name("nst-grid/fleet")
        runs = client.search_runs([exp.experiment_id])
        children = [x for x in runs if "cell_id" in x.data.tags]
        assert len(children) == 2 and {x.info.status for x in children} == {"FINISHED"}
        assert len([x for x in runs if x.data.tags.get("nst.kind") == "grid"]) == 1
        assert exp.artifact_location.startswith("mlflow-artifacts:")
        assert list((tmp_path / "artifacts").rglob("output.png"))
        table = (tmp_path / "reports" / "fleet" / "table.csv").read_text()
        assert table.count("FINISHED") == 2

        # Prefect on Postgres: each cell was a completed run of the nst-cell deployment
        pconn = psycopg2_connect(dbs["prefect"])
        with pconn.cursor() as cur:
            cur.execute(
                "SELECT fr.state_type, fr.name FROM flow_run fr JOIN deployment d ON fr.deployment_id = d.id "
                "WHERE d.name = 'nst-cell'"
            )
            cell_runs = cur.fetchall()
        pconn.close()
        assert len(cell_runs) == 2 and {st for st, _ in cell_runs} == {"COMPLETED"}, cell_runs

        # resume against the servers: nothing left to run
        r = cli(str(bindir / "nst"), "grid", "run", str(tmp_path / "exp.yaml"), "--grid", "fleet", "--dry-run")
        assert r.stdout.count("skip (finished)") == 2, r.stdout + r.stderr
    finally:
        stop_processes(procs)
        with conn.cursor() as cur:
            for db in dbs.values():
                cur.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        conn.close()
