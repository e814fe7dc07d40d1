#!/usr/bin/env python3
"""The terminal dashboard of the original Quick Start: ``keygen monitor`` by another name.

    python scripts/monitor-id-service.py [--url URL ...] [--once] [--help]

From a fresh clone it runs under the project's virtualenv (``.venv``, made by
``scripts/install``) whichever Python started it; without one it says how to make it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
PROG = "monitor-id-service.py"


def _in_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV_PYTHON.parent.parent.resolve()


def main() -> int:
    try:
        import httpx  # noqa: F401 - what the dashboard needs, checked before it starts
        import msgspec  # noqa: F401
        import rich  # noqa: F401

        from keygen.monitor import main as monitor
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.startswith("keygen."):
            raise  # keygen is there but broken: show the traceback
        if VENV_PYTHON.exists() and not _in_venv():
            os.execv(VENV_PYTHON, [str(VENV_PYTHON), __file__, *sys.argv[1:]])
        print(
            f"{PROG}: keygen is not installed for {sys.executable} ({exc}).\n"
            f"Install it with:  {ROOT / 'scripts' / 'install'}   (creates {ROOT / '.venv'})\n"
            f"or into this Python:  {sys.executable} -m pip install -e {ROOT}",
            file=sys.stderr,
        )
        return 2
    return monitor(sys.argv[1:], prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
