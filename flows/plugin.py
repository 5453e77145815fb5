"""What the `flows` package plugs into the `nst` command (entry points in pyproject.toml), so that
nst never imports flows by name: the grid commands and tracked training.

Light at import (no Prefect or MLflow): both are imported when a command runs.
"""

from __future__ import annotations

import os
from typing import Any, Callable


def add_commands(sub) -> None:
    """Entry point ``nst.commands: grid``: `nst grid ...` and `nst server ...`."""
    from .cli import add_commands as add

    add(sub)


def training_runner() -> Callable[..., list[dict[str, Any]]]:
    """Entry point ``nst.training: tracked``: the `run_training` behind `nst train` (a Prefect flow
    recorded in MLflow), imported after the offline settings are in the environment."""
    from tasks.settings import OFFLINE_ENV

    for k, v in OFFLINE_ENV.items():  # before Prefect is imported: it reads them once
        os.environ.setdefault(k, v)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from .train import run_training

    return run_training
