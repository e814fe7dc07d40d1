"""The baseline of ``benchmarks/allocate.py``: ``POST /allocate`` with no framework and no work.

A req/s figure on its own says more about the machine than about Keygen. The app is the one
``keygen bench`` measures beside Keygen (``keygen/bench/bare.py``, which ships with the
package): it reads the body, parses it with msgspec, and answers a constant of an
allocation's shape. Served by the same uvicorn with the same options, the gap between it and
Keygen is what Keygen's routing, validation, allocation and bookkeeping cost.

The runner starts it as ``uvicorn bare_app:app --app-dir benchmarks ...``.
"""

from keygen.bench.bare import ALLOCATION, app

__all__ = ["ALLOCATION", "app"]
