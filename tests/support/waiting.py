"""Waiting for a condition in a test: polled until a deadline, failing with what was awaited."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(
    condition: Callable[[], bool], timeout: float, what: str, *, poll: float = 0.05
) -> None:
    """Return once ``condition()`` holds; fail the test when it does not within ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {timeout:g} s")
        time.sleep(poll)
