"""Helpers of the tests that run imagingkit inside a real ipykernel.

The kernel runs its own event loop on its main thread while a cell executes, which is
what the notebook-facing clients must cope with (DESIGN.md D2). Import from here
(``from kernels import …``); these helpers need ``jupyter_client`` and ``ipykernel``
(the lab extra), so a test module skips itself first when they are missing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["read_output", "run_cell", "started_kernel"]


def run_cell(client: Any, code: str, timeout: float = 60) -> str:
    """Execute *code*; return its stdout, failing on an error reply."""
    return read_output(client, client.execute(code), timeout=timeout)


def read_output(client: Any, msg_id: str, until: str | None = None, timeout: float = 60) -> str:
    """Return the stdout of the execution *msg_id* once it contains *until* (None: once
    the cell has finished), failing on an error reply or after *timeout* seconds."""
    output = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = client.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            output.append(content["text"])
            if until is not None and until in "".join(output):
                return "".join(output)
        elif kind == "error":
            raise AssertionError("\n".join(content["traceback"]) + "".join(output))
        elif kind == "status" and content["execution_state"] == "idle":
            if until is None:
                return "".join(output)
            raise AssertionError(f"the cell finished without {until!r}:\n{''.join(output)}")
    raise AssertionError(f"cell did not finish within {timeout} s:\n{''.join(output)}")


@contextmanager
def started_kernel(startup_timeout: float = 60) -> Iterator[tuple[Any, Any]]:
    """Start a ``python3`` kernel; yield ``(manager, client)``; stop it (if still running)
    at the end, whatever the test did with it."""
    import jupyter_client.manager

    manager, client = jupyter_client.manager.start_new_kernel(
        kernel_name="python3", startup_timeout=startup_timeout
    )
    try:
        yield manager, client
    finally:
        client.stop_channels()
        if manager.has_kernel:
            manager.shutdown_kernel(now=True)
