"""``keygen monitor``: a terminal dashboard of one or several instances."""

from __future__ import annotations

import argparse


def add_monitor_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``keygen monitor``."""
