"""MLflow helpers: one experiment per grid, parent/child runs, batched metrics, finished-cell lookup.

Uses `MlflowClient` with explicit run ids (not the fluent active-run stack) so
cells running in worker threads never log into each other's runs.
"""

from __future__ import annotations

import errno
import math
import os
import random
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from nst import provenance

from . import mlflow_views, settings
from .cancel import CellCancelled

EXPERIMENT_PREFIX = "nst-grid/"
MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch call
MAX_TAG = 5000


_STORES_READY: set[str] = set()
_STORES_LOCK = threading.Lock()


def client() -> MlflowClient:
    uri = settings.configure()
    if uri not in _STORES_READY:
        _open_store(uri)
    return MlflowClient(tracking_uri=uri)


def _open_store(uri: str) -> None:
    """Create (or migrate) a sqlite store under a file lock, once per process.

    MLflow creates a new sqlite store's tables on first use without a lock, so two grid runs
    started together on a fresh store raced (``table experiments already exists``).  The lock
    file serialises that step between processes; later opens find the tables and skip it.
    """
    with _STORES_LOCK:
        if uri in _STORES_READY:
            return
        if uri.startswith("sqlite:///"):
            import fcntl

            db = Path(uri[len("sqlite:///"):])
            with open(db.with_name(db.name + ".lock"), "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)
        _STORES_READY.add(uri)


#: Disk full, read-only, permission, not-a-folder: retrying does not help, the user must act.
_PERMANENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR,
                     errno.EISDIR, errno.ENAMETOOLONG}


def is_transient(exc: BaseException) -> bool:
    """Errors worth a retry: the tracking store busy or unreachable for a moment (not bad input).

    The one rule for every caller (cell and training retries in Prefect: `retry_transient`, claims,
    logging)."""
    from nst.errors import NSTError

    if isinstance(exc, (NSTError, KeyboardInterrupt, CellCancelled, ClaimLost)):
        return False
    if isinstance(exc, OSError) and exc.errno in _PERMANENT_ERRNOS:
        return False
    text = f"{type(exc).__name__}: {exc}".lower()
    return isinstance(exc, (ConnectionError, TimeoutError, OSError)) or any(
        s in text for s in ("database is locked", "connection", "timed out", "temporarily", "max retries",
                            "502", "503", "504", "unavailable", "out of memory"))


def retry_transient(task, task_run, state) -> bool:
    """Prefect's ``retry_condition_fn`` of every nst task: retry only what `is_transient` calls transient."""
    try:
        state.result()
    except Exception as exc:
        return is_transient(exc)
    return False


def retrying(fn, *args, attempts: int = 6, **kwargs):
    """`fn(*args, **kwargs)`, retried with backoff (0.2 s doubling) while the error is transient."""
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if i == attempts - 1 or not is_transient(exc):
                raise
            time.sleep(0.2 * 2**i * (0.5 + random.random()))


def experiment_name(grid: str) -> str:
    return EXPERIMENT_PREFIX + grid


def experiment_id(grid: str, create: bool = True) -> str | None:
    c = client()
    name = experiment_name(grid)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if create:  # experiments made before nst tagged their kind open on the runs table too
            mlflow_views.ensure_training_view(c, exp)
        return exp.experiment_id
    if not create:
        return None
    root = settings.artifact_root()
    location = f"{root.rstrip('/')}/{grid}" if root else None
    try:
        return c.create_experiment(name, artifact_location=location,
                                   tags={"nst.grid": grid, **mlflow_views.EXPERIMENT_TAGS})
    except Exception:  # created concurrently by another worker
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


#: The nst-lab checkout's commit, recorded on every run (`nst.provenance`).
git_commit = provenance.git_commit


def finished_cells(exp_id: str) -> dict[str, str]:
    """cell_id -> run_id of every FINISHED child run of the experiment."""
    c = client()
    out: dict[str, str] = {}
    token = None
    while True:
        page = c.search_runs(
            [exp_id], filter_string="attributes.status = 'FINISHED'", max_results=1000, page_token=token
        )
        for r in page:
            cid = r.data.tags.get("cell_id")
            if cid:
                out.setdefault(cid, r.info.run_id)
        token = page.token
        if not token:
            return out


def live_claims(exp_id: str) -> dict[str, str]:
    """cell_id -> run_id of the experiment's RUNNING runs that are still owned (see `_claim_is_live`)."""
    c = client()
    now = time.time()
    runs = retrying(c.search_runs, [exp_id], filter_string="attributes.status = 'RUNNING'", max_results=1000)
    return {r.data.tags["cell_id"]: r.info.run_id for r in runs
            if r.data.tags.get("cell_id") and _claim_is_live(r, now)}


def close_abandoned_runs(exp_id: str) -> list[str]:
    """Mark KILLED the RUNNING runs nobody owns any more (a SIGKILLed or crashed grid).

    On this host a run is owned while its process exists; a run of another host while its
    heartbeat is fresh (`CLAIM_TTL_S`).  Temporary files a killed upload left are removed.
    """
    c = client()
    now = time.time()
    closed = []
    for r in retrying(c.search_runs, [exp_id], filter_string="attributes.status = 'RUNNING'", max_results=1000):
        t = r.data.tags
        if t.get("nst.pid") == str(os.getpid()) and t.get("nst.host") == socket.gethostname():
            continue
        if _claim_is_live(r, now):
            continue
        _kill(c, r, f"abandoned: process {t.get('nst.pid', '?')} on {t.get('nst.host', '?')} ended (or stopped "
                    "beating) without closing the run")
        closed.append(r.info.run_id)
    return closed


def _kill(c: MlflowClient, run, reason: str) -> None:
    retrying(c.set_tag, run.info.run_id, "error", reason[:MAX_TAG])
    retrying(c.set_terminated, run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
    root = _local_artifact_dir(run.info.artifact_uri)
    if root is not None and root.is_dir():
        for tmp in root.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)


def _local_artifact_dir(uri: str) -> Path | None:
    from urllib.parse import unquote, urlparse

    scheme = urlparse(uri).scheme
    if scheme == "file":
        return Path(unquote(urlparse(uri).path))
    return Path(uri) if scheme == "" else None  # s3:, mlflow-artifacts: (the server's proxy), ...


#: A claim is live while its heartbeat (epoch seconds, tag ``nst.heartbeat``) is younger than this.
CLAIM_TTL_S = float(os.environ.get("NST_CLAIM_TTL", "120"))
HEARTBEAT_S = float(os.environ.get("NST_HEARTBEAT", str(max(1.0, CLAIM_TTL_S / 8))))


class ClaimLost(Exception):
    """Another live run holds (or finished) this cell: it must not run here."""

    def __init__(self, cell_id: str, holder: str, finished: bool) -> None:
        super().__init__(f"cell {cell_id[:12]} is {'finished' if finished else 'running'} in run {holder}")
        self.cell_id, self.holder, self.finished = cell_id, holder, finished


def _claim_is_live(run, now: float) -> bool:
    """A RUNNING run still owned by a process: same host -> its pid exists; any host -> fresh heartbeat."""
    import psutil

    t = run.data.tags
    if t.get("nst.host") == socket.gethostname() and t.get("nst.pid", "").isdigit():
        return psutil.pid_exists(int(t["nst.pid"]))  # this host's processes can be checked exactly
    try:
        beat = float(t.get("nst.heartbeat", "nan"))
    except ValueError:
        return False
    return math.isfinite(beat) and now - beat < CLAIM_TTL_S


def _contend(c: MlflowClient, exp_id: str, cell_id: str, run_id: str) -> tuple[str, bool] | None:
    """Decide whether the just-created RUNNING run `run_id` may run `cell_id`: None if so, else the holder.

    The rule: a run wins only if, after its creation, it sees no other FINISHED or live RUNNING run
    of the cell.  If two contenders' creations overlap, at least one sees the other (the store
    serialises writes and reads), so at most one wins; if both see each other, both give way and
    retry after a random pause.  Stale claims (dead process, expired heartbeat) are taken over:
    marked KILLED with the reason.
    """
    now = time.time()
    runs = retrying(c.search_runs, [exp_id], filter_string=f"tags.cell_id = '{cell_id}'", max_results=1000)
    for r in runs:
        if r.info.run_id == run_id:
            continue
        if r.info.status == "FINISHED":
            return r.info.run_id, True
        if r.info.status == "RUNNING":
            if _claim_is_live(r, now):
                return r.info.run_id, False
            _kill(c, r, f"claim taken over by run {run_id}: its process is gone or its heartbeat expired")
    return None


def _withdraw(c: MlflowClient, run_id: str) -> None:
    """A claim that lost: end it and delete it, so it counts as nobody's run."""
    retrying(c.set_terminated, run_id, RunStatus.to_string(RunStatus.KILLED))
    retrying(c.delete_run, run_id)


class _Heartbeat:
    """Refreshes a run's ``nst.heartbeat`` tag from a daemon thread while the run is open."""

    def __init__(self, c: MlflowClient, run_id: str) -> None:
        self._c, self._run_id, self._stop = c, run_id, threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{run_id[:8]}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                retrying(self._c.set_tag, self._run_id, "nst.heartbeat", f"{time.time():.3f}")
            except Exception:  # a store down for longer than the retries: the next beat tries again
                pass

    def __enter__(self) -> "_Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=HEARTBEAT_S + 5)


def run_tags(device: str | None = None) -> dict[str, str]:
    """Provenance of a run (`nst.provenance.environment`) as ``nst.env.*`` tags, plus host and pid."""
    tags = {f"nst.env.{k}": v for k, v in provenance.environment(device).items()}
    tags.update({"nst.host": socket.gethostname(), "nst.pid": str(os.getpid()), "git_commit": git_commit()})
    return tags


@contextmanager
def tracked_run(
    exp_id: str, name: str, tags: dict[str, str], parent_run_id: str | None = None, *,
    device: str | None = None, claim: str | None = None,
) -> Iterator[str]:
    """Create a run and always end it: FINISHED, or FAILED with the error as a tag (then re-raise).

    Every run records its provenance (`run_tags` for `device`).  With ``claim=cell_id`` the run
    is also the cell's claim: it raises `ClaimLost` (leaving no run behind) when another live run
    holds the cell or it is finished, and keeps a heartbeat while it runs.
    """
    c = client()
    all_tags = {MLFLOW_RUN_NAME: name, **run_tags(device), **tags, "nst.heartbeat": f"{time.time():.3f}"}
    if parent_run_id:
        all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    run_id = _create_claimed(c, exp_id, all_tags, name, claim) if claim else \
        retrying(c.create_run, exp_id, tags=all_tags, run_name=name).info.run_id
    status = RunStatus.to_string(RunStatus.FAILED)
    try:
        with _Heartbeat(c, run_id):
            yield run_id
        status = RunStatus.to_string(RunStatus.FINISHED)
    except BaseException as exc:
        if isinstance(exc, (KeyboardInterrupt, CellCancelled)):
            status = RunStatus.to_string(RunStatus.KILLED)
        try:
            c.set_tag(run_id, "error", f"{type(exc).__name__}: {exc}"[:MAX_TAG])
        except Exception:
            pass
        raise
    finally:
        retrying(c.set_terminated, run_id, status)


def _create_claimed(c: MlflowClient, exp_id: str, tags: dict[str, str], name: str, cell_id: str,
                    attempts: int = 8) -> str:
    """Create the cell's run as its claim (see `_contend`); retries while contenders give way to each other."""
    holder: tuple[str, bool] | None = None
    for attempt in range(attempts):
        run_id = retrying(c.create_run, exp_id, tags={**tags, "nst.heartbeat": f"{time.time():.3f}"},
                          run_name=name).info.run_id
        try:
            holder = _contend(c, exp_id, cell_id, run_id)
        except BaseException:
            _withdraw(c, run_id)
            raise
        if holder is None:
            return run_id
        _withdraw(c, run_id)
        if holder[1]:
            break
        # the holder may be a contender that is giving way too: look again after a random pause
        time.sleep(random.uniform(0.05, 0.3) * (attempt + 1))
        if _holder_alive(c, holder[0]):
            break
    raise ClaimLost(cell_id, holder[0], holder[1])


def _holder_alive(c: MlflowClient, run_id: str) -> bool:
    try:
        r = retrying(c.get_run, run_id)
    except Exception as exc:
        if "not found" in str(exc).lower() or "RESOURCE_DOES_NOT_EXIST" in str(exc):
            return False
        raise
    return r.info.lifecycle_stage == "active" and r.info.status in ("RUNNING", "FINISHED")


def log_artifacts(run_id: str, local_dir: str | Path, artifact_path: str | None = None) -> None:
    """Upload a folder's files so that none is ever seen half-written in the artifact store.

    Local stores: each file is copied under a temporary name next to its destination and renamed
    (atomic on one file system); remote stores (S3, the tracking server's proxy) write each object
    whole.  A SIGKILL during logging therefore leaves whole files or none.
    """
    import shutil

    c = client()
    root = _local_artifact_dir(retrying(c.get_run, run_id).info.artifact_uri)
    if root is None:
        retrying(c.log_artifacts, run_id, str(local_dir), artifact_path)
        return
    dest_root = root / artifact_path if artifact_path else root
    for src in sorted(Path(local_dir).rglob("*")):
        if not src.is_file():
            continue
        dest = dest_root / src.relative_to(local_dir)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)


def log_batch(run_id: str, metrics: dict[str, float] | None = None, params: dict[str, Any] | None = None,
              tags: dict[str, Any] | None = None,
              step_metrics: list[tuple[int, dict[str, float]]] | None = None) -> None:
    """Everything in as few `log_batch` calls as MLflow's limits allow (not one call per step)."""
    c = client()
    now = int(time.time() * 1000)
    ms = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items() if _finite(v)]
    for step, values in step_metrics or []:
        ms.extend(Metric(k, float(v), now, int(step)) for k, v in values.items() if _finite(v))
    ps = [Param(k, str(v)[:6000]) for k, v in (params or {}).items()]
    ts = [RunTag(k, str(v)[:MAX_TAG]) for k, v in (tags or {}).items()]
    # MLflow accepts at most 1000 metrics, 100 params and 100 tags per call.
    for i in range(0, max(len(ms), len(ps) * 10, len(ts) * 10, 1), MAX_BATCH):
        j = i // 10
        retrying(c.log_batch, run_id, metrics=ms[i : i + MAX_BATCH], params=ps[j : j + 100], tags=ts[j : j + 100])


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False
