"""Real services for tests: free loopback ports, the machine's PostgreSQL, an MLflow server on it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

PG = dict(host="127.0.0.1", port=5432, user="postgres")
BINDIR = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def psycopg():
    """An autocommit connection to the machine's PostgreSQL (skips where there is none)."""
    psycopg2 = pytest.importorskip("psycopg2", reason="psycopg2-binary (grid extra) is needed")
    try:
        conn = psycopg2.connect(dbname="postgres", connect_timeout=3, **PG)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at {PG['host']}:{PG['port']}: {exc}")
    conn.autocommit = True
    return conn


def psycopg2_connect(db: str):
    import psycopg2

    return psycopg2.connect(dbname=db, connect_timeout=3, **PG)


def log_tail(p: subprocess.Popen) -> str:
    f = getattr(p, "log_path", None)
    return Path(f).read_text()[-2000:] if f else ""


def wait_http(url: str, procs: list[subprocess.Popen], timeout: float = 120) -> None:
    """Until `url` answers 200; fails early if one of `procs` exits."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{p.args[:3]} exited with {p.returncode}: {log_tail(p)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        try:  # wait on the server process itself: returns early if it dies
            procs[-1].wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            pass
    raise AssertionError(f"{url} did not come up in {timeout}s")


def start_process(name: str, args: list[str], env: dict, logs: Path, procs: list[subprocess.Popen],
                  cwd: Path | None = None) -> subprocess.Popen:
    logs.mkdir(parents=True, exist_ok=True)
    out = open(logs / f"{name}.log", "a")
    # its own process group: `mlflow server` and `prefect server` fork workers that hold the port, and
    # stopping only the parent leaves them serving (a restart on that port then never answers)
    p = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)
    p.log_path = logs / f"{name}.log"  # type: ignore[attr-defined]
    procs.append(p)
    return p


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    if p.poll() is not None:
        return
    try:
        if os.getpgid(p.pid) == p.pid:  # started by start_process: its own group
            os.killpg(p.pid, sig)  # the process and every worker it forked
        else:
            p.send_signal(sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_processes(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each process's group, SIGKILL what is left after 20 s: no orphaned worker keeps a port."""
    for p in procs:
        _signal_group(p, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        _signal_group(p, signal.SIGKILL)
        p.wait()


class MlflowServer:
    """`mlflow server` on its own Postgres database and a loopback port; `stop()` / `start()` it at will."""

    def __init__(self, tmp: Path, db: str) -> None:
        self.tmp, self.db, self.port = tmp, db, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
        start_process("mlflow", [str(BINDIR / "mlflow"), "server",
                                 "--backend-store-uri", f"postgresql+psycopg2://postgres@127.0.0.1:5432/{self.db}",
                                 "--artifacts-destination", (self.tmp / "artifacts").as_uri(),
                                 "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                                 "--allowed-hosts", f"127.0.0.1:{self.port},localhost:{self.port}"],
                      env, self.tmp / "logs", self.procs)
        wait_http(f"{self.uri}/health", self.procs[-1:])

    def stop(self) -> None:
        stop_processes(self.procs)
        self.procs.clear()


@contextmanager
def mlflow_server(tmp: Path) -> Iterator[MlflowServer]:
    """A running MLflow tracking server on a new Postgres database, dropped afterwards."""
    conn = psycopg()
    db = f"nst_test_mlflow_{uuid.uuid4().hex[:8]}"
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {db}")
    server = MlflowServer(tmp, db)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        conn.close()
