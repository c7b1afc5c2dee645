"""Process liveness, for cleaning up temporary files left by dead writers."""

from __future__ import annotations

import os

__all__ = ["pid_alive"]


def pid_alive(pid: int) -> bool:
    """Tell whether a process with *pid* exists on this machine (POSIX ``kill(pid, 0)``).

    A process owned by another user counts as alive.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
