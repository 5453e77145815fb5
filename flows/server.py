"""`nst server start|stop|status`: a local Prefect server whose UI outlives the grids it ran.

The server runs detached (its own session) on a loopback port with Prefect's own sqlite default under
``$NST_HOME/prefect`` (its ``PREFECT_HOME``: ``prefect.db``), logging to ``$NST_HOME/prefect/server.log``;
``$NST_HOME/prefect/server.json`` records its pid, port and URL.  While it answers, `nst grid run`
(and `nst reproduce`, `nst grid report`) point ``PREFECT_API_URL`` at it, so flow runs, task runs and
artifacts stay browsable after the grid ends; otherwise Prefect runs ephemerally inside the process.
An explicit ``PREFECT_API_URL`` always wins.

Plain Python with the standard library and psutil: nothing here imports Prefect.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
DEFAULT_PORT = 4200


def home() -> Path:
    from tasks.settings import nst_home

    return nst_home() / "prefect"


def state_file() -> Path:
    return home() / "server.json"


def log_file() -> Path:
    return home() / "server.log"


@dataclass
class ServerState:
    pid: int
    port: int
    url: str  # http://127.0.0.1:PORT (the UI); the API is url + "/api"
    log: str
    home: str

    @property
    def api_url(self) -> str:
        return self.url + "/api"


def read_state() -> ServerState | None:
    try:
        return ServerState(**json.loads(state_file().read_text()))
    except (OSError, ValueError, TypeError):
        return None


def healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/api/health", timeout=timeout) as r:
            return r.status == 200 and r.read().strip() == b"true"
    except OSError:
        return False


def _alive(pid: int) -> bool:
    import psutil

    try:
        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE and "prefect" in " ".join(p.cmdline())
    except (psutil.Error, OSError):
        return False


def running(timeout: float = 2.0) -> ServerState | None:
    """The recorded server, if its process is alive and its API answers."""
    st = read_state()
    if st is None or not _alive(st.pid) or not healthy(st.url, timeout):
        return None
    return st


def use_if_running() -> str | None:
    """Point this process's Prefect at the running nst server (unless PREFECT_API_URL is set)."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    st = running()
    if st is None:
        return None
    os.environ["PREFECT_API_URL"] = st.api_url
    return st.api_url


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
            return True
        except OSError:
            return False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start(port: int = DEFAULT_PORT, timeout: float = 180.0) -> ServerState:
    """Start the server detached and wait until its API answers (or raise with the log's tail)."""
    from nst.errors import ConfigError

    st = running()
    if st is not None:
        return st
    if not _port_free(port):
        raise ConfigError(f"port {HOST}:{port} is in use (another Prefect server?); choose one with --port")
    h = home()
    h.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PREFECT_HOME": str(h), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DO_NOT_TRACK": "1", "PREFECT_SERVER_API_HOST": HOST, "PREFECT_SERVER_API_PORT": str(port)}
    for k in ("PREFECT_API_URL", "PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_PROFILES_PATH"):
        env.pop(k, None)  # its own sqlite default under PREFECT_HOME, not the caller's
    url = f"http://{HOST}:{port}"
    with open(log_file(), "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(port),
             "--analytics-off", "--no-background"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=h,
            start_new_session=True,  # outlives this shell; Ctrl-C here does not reach it
        )
    st = ServerState(proc.pid, port, url, str(log_file()), str(h))
    state_file().write_text(json.dumps(st.__dict__, indent=1))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            state_file().unlink(missing_ok=True)
            raise ConfigError(f"the Prefect server exited with status {proc.returncode}:\n{_tail(log_file())}")
        if healthy(url):
            return st
        time.sleep(0.5)
    stop()
    raise ConfigError(f"the Prefect server did not answer at {url} within {timeout:.0f} s:\n{_tail(log_file())}")


def stop(timeout: float = 30.0) -> bool:
    """Stop the recorded server (SIGTERM to its process group, SIGKILL after `timeout`); False: none."""
    st = read_state()
    if st is None:
        return False
    was = _alive(st.pid)
    if was:
        try:
            os.killpg(st.pid, signal.SIGTERM)  # the server and its uvicorn workers (own session)
        except (ProcessLookupError, PermissionError):
            os.kill(st.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(st.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(st.pid):
            try:
                os.killpg(st.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _reap(st.pid)
    state_file().unlink(missing_ok=True)
    return was


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)  # our own child (started in this process): no zombie left
    except ChildProcessError:
        pass


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------- CLI


def add_commands(sub) -> None:
    p = sub.add_parser("server", help="a local Prefect server whose UI outlives the grids (start|stop|status)",
                       description="A local Prefect server (sqlite under $NST_HOME/prefect, loopback port) that "
                                   "`nst grid run` uses while it runs; without it Prefect runs ephemerally.")
    ssub = p.add_subparsers(dest="server_command", required=True, metavar="SERVER_COMMAND")
    s = ssub.add_parser("start", help="start it detached and wait until it answers")
    s.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port on {HOST}")
    s.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for it to answer")
    s.set_defaults(func=cmd_start)
    ssub.add_parser("stop", help="stop it").set_defaults(func=cmd_stop)
    ssub.add_parser("status", help="whether it runs, where (exit 0), or not (exit 3)").set_defaults(func=cmd_status)


def cmd_start(args) -> int:
    before = running()
    st = start(args.port, args.timeout)
    print(f"Prefect server {'already running' if before else 'started'}: {st.url} (pid {st.pid}, "
          f"port {st.port})\n  database {Path(st.home) / 'prefect.db'}\n  log      {st.log}\n"
          f"  `nst grid run` now uses it; `nst server stop` stops it")
    return 0


def cmd_stop(args) -> int:
    print("Prefect server stopped" if stop() else "no Prefect server was running")
    return 0


def cmd_status(args) -> int:
    st = running()
    if st is None:
        rec = read_state()
        print("Prefect server: not running" + (f" (stale record of pid {rec.pid}: {state_file()})" if rec else "")
              + "; `nst grid run` uses an ephemeral one")
        return 3
    print(f"Prefect server: running at {st.url} (pid {st.pid}, port {st.port})\n  database "
          f"{Path(st.home) / 'prefect.db'}\n  log      {st.log}")
    return 0
