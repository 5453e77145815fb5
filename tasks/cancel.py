"""Interrupting a grid: the flag the grid flow sets on Ctrl-C and the exception running cells raise.

Its own module so that both `tasks.tracking` (a cancelled cell's run ends KILLED, and is never retried)
and the cell runner (`tasks.cell`, `tasks.cell_log`) import it without importing each other.
"""

from __future__ import annotations

import threading


class CellCancelled(Exception):
    """The grid was interrupted (Ctrl-C): running cells stop at their next step and close their runs."""


#: Set by the grid flow on Ctrl-C; checked by every cell after each step.
CANCEL = threading.Event()
