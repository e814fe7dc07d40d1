"""``keygen chaos``: random faults under load, every acknowledged range recorded, and the
independent checker at the end (the way Jepsen asks "can it ever produce a duplicate?").

    proxy.py     a TCP proxy that passes, drops, resets or delays (the network partitions)
    load.py      an open-loop load generator that records every acknowledged range
    faults.py    the fault kinds, one registry, each built from shared steps
    nemesis.py   the plan of faults, applied one fault window at a time
    report.py    the report (JSON and Markdown) and the verdict
    instances.py ``keygen serve`` instances as child processes
    cli.py       the ``keygen chaos`` command line: its options and their defaults
    run.py       the run that ties them together (view.py: its live view)
"""
