"""At most one refill per namespace in flight, awaited by every request that needs it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any


class SingleFlight:
    """Runs at most one call per key at a time; concurrent callers await the same call.

    The call is shielded: a caller whose time budget runs out stops waiting, but does not
    cancel the call the other callers are waiting for.
    """

    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Future[None]] = {}

    async def run(self, key: str, call: Callable[[], Coroutine[Any, Any, None]]) -> None:
        flight = self._flights.get(key)
        # A done flight whose callback has not run yet must not be awaited again: awaiting a
        # done future does not yield, and the caller's retry loop would spin.
        if flight is None or flight.done():
            flight = asyncio.ensure_future(call())
            self._flights[key] = flight
            flight.add_done_callback(partial(self._landed, key))
        await asyncio.shield(flight)

    def _landed(self, key: str, flight: asyncio.Future[None]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.cancelled():
            flight.exception()  # retrieved here too, in case every caller gave up
