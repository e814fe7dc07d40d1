"""``keygen chaos``: random faults under load, every acknowledged range recorded, and the
independent checker at the end (the way Jepsen asks "can it ever produce a duplicate?").

    proxy.py    a TCP proxy that passes, drops, resets or delays (the network partitions)
    load.py     an open-loop load generator that records every acknowledged range
    nemesis.py  the fault kinds, each a real action with a start and an end (a fault window)
    report.py   the report (JSON and Markdown) and the verdict
    instances.py ``keygen serve`` instances as child processes
    runner.py   the ``keygen chaos`` command that ties them together
"""
