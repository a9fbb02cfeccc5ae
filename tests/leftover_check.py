"""What a run left behind: its processes, and temporary directories in /tmp (wandb's import makes tmp*wandb-media and
tmp*wandb-artifacts, which a killed process never removes)."""

import tempfile
import time
from pathlib import Path

from rlqa.cluster import remaining

TEMP_LITTER = ("tmp*wandb*",)


def temp_litter(since: float) -> list[str]:
    """Litter in the temporary directory made at or after `since` (time.time())."""
    root = Path(tempfile.gettempdir())
    return sorted(str(p) for pattern in TEMP_LITTER for p in root.glob(pattern) if p.stat().st_mtime >= since)


def left_behind(session_id: int, since: float, within_s: float = 10.0) -> dict:
    """The processes of session `session_id` still alive after waiting up to `within_s`, and the temporary
    litter made since `since`, as {pid or path: what it is}."""
    found = dict(remaining(session_id, within_s=within_s))
    found.update({path: "temporary directory" for path in temp_litter(since)})
    return found


def started() -> float:
    """A time stamp to give `left_behind` (mtimes have coarse resolution on some filesystems)."""
    return time.time() - 1.0
