"""How the long-running tools (the local cluster, backup, restore) say what they are doing."""

from __future__ import annotations

from collections.abc import Callable

#: Called with one line of progress at each step.
Progress = Callable[[str], None]


def quiet(message: str) -> None:
    """The default progress reporter: say nothing."""
