"""Where runs are tracked when nothing is configured: absolute, documented locations.

MLflow's own defaults (``sqlite:///mlflow.db``, ``./mlruns``) depend on the
working directory, so two shells would see two different histories.  nst-lab
keeps everything under ``$NST_HOME`` (default ``~/.nst``):

* tracking store  ``sqlite:///$NST_HOME/mlflow.db``   (``MLFLOW_TRACKING_URI`` overrides)
* artifacts       ``$NST_HOME/mlartifacts/<experiment>`` (``NST_ARTIFACT_ROOT`` overrides;
  with a tracking *server* the server's artifact store is used)
* Prefect         ephemeral local server in the CLI process (``PREFECT_API_URL`` overrides)

Telemetry of both tools is switched off (the machines here are offline), and so are MLflow's
per-run "View run ... at" lines on stdout.
"""

from __future__ import annotations

import os
from pathlib import Path

OFFLINE_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    # the first start of the ephemeral server migrates its database: slow on a busy 2-core laptop
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # MlflowClient.set_terminated prints "🏃 View run ... at: http://..." for every run ended on a tracking
    # server (mlflow.tracking._tracking_service.client._log_url): one pair of lines per cell on stdout
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


def nst_home() -> Path:
    return Path(os.environ.get("NST_HOME") or "~/.nst").expanduser().resolve()


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{nst_home() / 'mlflow.db'}"


def is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def artifact_root() -> str | None:
    """Artifact location for new experiments; None lets a tracking server decide."""
    if os.environ.get("NST_ARTIFACT_ROOT"):
        return os.environ["NST_ARTIFACT_ROOT"]
    if is_local_store(tracking_uri()):
        return (nst_home() / "mlartifacts").as_uri()
    return None


def reports_dir() -> Path:
    return Path(os.environ.get("NST_REPORTS") or "reports").resolve()


def configure() -> str:
    """Apply the defaults to this process (and its children) and return the tracking URI."""
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    import logging

    import mlflow

    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial tables..." noise
    mlflow.set_tracking_uri(uri)
    return uri


def writable_dir(path: str | Path, what: str) -> Path:
    """`path` as a folder this process can write into (created if missing), else a one-line ConfigError."""
    from nst.errors import ConfigError

    p = Path(path).expanduser().resolve()
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".nst-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{what}: cannot write to {p} ({exc.strerror or exc})") from None
    return p

