"""``keygen bench``: an open-loop load generator and the two tables of the original product
description, measured on this machine (docs: benchmarks/README.md, "keygen bench").

    stats.py       the schedule, the latency histogram, a step's figures, the saturation rule
    generator.py   the generator: a raw asyncio protocol on uvloop
    parallel.py    the schedule split between processes, their results merged
    bare.py        the baseline: a bare ASGI app that answers a constant allocation
    targets.py     what is measured: a running service, or a topology started for the run
    allocation.py  the *Allocation performance* table: steps up to saturation, both targets
    failover.py    the *Failover performance* table: faults of ``keygen.chaos`` under load
    tables.py      both tables as Markdown, next to the original's figures
    run.py         one run: the targets up, the steps, the scenarios, the report
    cli.py         the command line (only the standard library is imported with the parser)
"""

from __future__ import annotations

from keygen.errors import ToolError

__all__ = ["TOPOLOGIES", "BenchError"]

#: What ``--topology`` starts (``targets.py``): plain data, for the parser.
TOPOLOGIES = ("embedded", "postgres", "redis")


class BenchError(ToolError):
    """A benchmark could not run: bad arguments the parser cannot see, a target that does
    not answer, a topology that did not start. Reported as a message and exit status."""

    code = "bench_error"
