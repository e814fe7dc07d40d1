"""The allocator: tries each layer in order, within a time budget, behind a circuit breaker.

It knows dispensers only through the ``Dispenser`` protocol. A layer that fails, times out or
has its breaker open is skipped and the next one is tried; a request error (bad size,
exhausted namespace) is the same whichever layer serves, so it is raised at once. When no
layer serves within ``ALLOCATION_TIMEOUT`` the request fails with ``ServiceUnavailable``,
whose ``Retry-After`` is when the first breaker will let a probe through.

A layer may be *guaranteed* part of the budget: the layers before it give up that long before
the deadline, so a hanging backend early in the order cannot starve a later layer (the
emergency reserve) of its turn.

A layer that goes silent (no answer, no refusal: a dropped-packet partition, a frozen
process) must not hold every request for its whole timeout. A watchdog counts each attempt
still pending after ``stall_timeout`` as a failure of its layer, so a few stalled requests
open the breaker and the requests after them go straight to the next layer; the stalled
ones wait out their own timeout (a range one of them may still get is its own, or wasted).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgspec

from keygen.breaker import CircuitBreaker
from keygen.dispensers.base import Dispenser
from keygen.dispensers.segments import SegmentDispenser
from keygen.errors import LayerUnavailable, RequestError, ReserveUnavailable, ServiceUnavailable
from keygen.metrics import Counters
from keygen.ranges import IdRange

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Layer:
    """A dispenser, its breaker, the most of the budget one attempt on it may take, and the
    part of the budget kept for it (the layers before it stop that long before the deadline)."""

    dispenser: Dispenser
    breaker: CircuitBreaker
    timeout: float
    guaranteed: float = 0.0
    #: Attempts in flight, for the stall watchdog.
    pending: set[_Attempt] = field(default_factory=set)
    #: The dispenser's way of serving from memory at once, if it has one (segments).
    carve_now: Callable[[str, int], IdRange | None] | None = field(init=False)
    #: The dispenser's source (fixed for each dispenser), read on every request.
    source: str = field(init=False)

    def __post_init__(self) -> None:
        dispenser = self.dispenser
        self.carve_now = dispenser.carve_now if isinstance(dispenser, SegmentDispenser) else None
        self.source = dispenser.source


class _Attempt:
    """One request's try of one layer; ``stalled`` once the watchdog counted it."""

    __slots__ = ("stalled", "started")

    def __init__(self, started: float) -> None:
        self.started = started
        self.stalled = False


class Allocation(msgspec.Struct, frozen=True, gc=False):
    """A request's range and the layer it came from (a Struct: one per request, see
    ``IdRange``)."""

    range: IdRange
    source: str


class Allocator:
    """Serves each request from the first layer that can, and says which one did."""

    def __init__(
        self,
        layers: Sequence[Layer],
        *,
        timeout: float,
        metrics: Counters,
        on_allocated: Callable[[str, int], None] | None = None,
        stall_timeout: float = 0.5,
    ) -> None:
        """``on_allocated(namespace, size)`` is called after every success, whichever layer
        served (the emergency reserve learns the namespaces served and their rate from it)."""
        if not layers:
            raise ValueError("an allocator needs at least one layer")
        self.layers = tuple(layers)
        self.timeout = timeout
        self.metrics = metrics
        self.on_allocated = on_allocated
        self.stall_timeout = stall_timeout
        self._watchdog: asyncio.Task[None] | None = None
        # Per layer, the budget kept for the layers after it.
        self._kept_after = tuple(
            sum(later.guaranteed for later in self.layers[i + 1 :]) for i in range(len(layers))
        )

    async def allocate(self, namespace: str, size: int) -> Allocation:
        # perf_counter, not loop.time(): uvloop's clock ticks in whole milliseconds.
        started = time.perf_counter()
        deadline = started + self.timeout
        refused: tuple[Layer, ReserveUnavailable] | None = None
        for layer, kept in zip(self.layers, self._kept_after, strict=True):
            if not layer.breaker.allow():
                continue
            if layer.carve_now is not None:
                # Served from memory, or not at all: no await, so no timeout to arm (an
                # asyncio.timeout was about 7 % of a request's CPU, profiled under load), and
                # no time taken from the budget.
                id_range = layer.carve_now(namespace, size)
                if id_range is not None:
                    return self._served(layer, id_range, size, started)
            remaining = deadline - time.perf_counter() - kept
            if remaining <= 0:
                continue
            # Inline, not in a coroutine of its own: an extra await per request is measurable.
            attempt = _Attempt(time.perf_counter())
            layer.pending.add(attempt)
            try:
                async with asyncio.timeout(min(layer.timeout, remaining)):
                    id_range = await layer.dispenser.allocate(namespace, size)
            except RequestError:
                if not attempt.stalled:
                    layer.breaker.record_success()  # it answered; the request was at fault
                self.metrics.record_failure(time.perf_counter() - started)
                raise
            except Exception as exc:
                refused = _judged(layer, attempt, exc, min(layer.timeout, remaining))
                continue
            finally:
                layer.pending.discard(attempt)
            if attempt.stalled:  # a stalled layer's late answers do not clear its record
                self.metrics.record_success(layer.source, size, time.perf_counter() - started)
                if self.on_allocated is not None:
                    self.on_allocated(namespace, size)
                return Allocation(id_range, layer.source)
            return self._served(layer, id_range, size, started)
        self.metrics.record_failure(time.perf_counter() - started)
        if refused is not None:
            # The last resort said no: only another layer's recovery can help.
            layer, reason = refused
            raise ServiceUnavailable(
                f"no layer could allocate within the time budget; {reason.message}",
                retry_after=self.retry_after(skip=layer),
                code=reason.code,
            )
        raise ServiceUnavailable(
            "no layer could allocate within the time budget", retry_after=self.retry_after()
        )

    def _served(self, layer: Layer, id_range: IdRange, size: int, started: float) -> Allocation:
        layer.breaker.record_success()
        self.metrics.record_success(layer.source, size, time.perf_counter() - started)
        if self.on_allocated is not None:
            self.on_allocated(id_range.namespace, size)
        return Allocation(id_range, layer.source)

    def retry_after(self, skip: Layer | None = None) -> int:
        """Whole seconds until some layer (other than ``skip``) will be tried again (at
        least 1)."""
        waits = [layer.breaker.retry_after() for layer in self.layers if layer is not skip]
        return max(1, math.ceil(min(waits, default=0.0)))

    def start(self) -> None:
        """Start the stall watchdog (on the running loop)."""
        self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.stall_timeout / 5)
            self.count_stalls(time.perf_counter())

    def count_stalls(self, now: float) -> None:
        """Count every attempt pending longer than ``stall_timeout`` (once) against its layer."""
        for layer in self.layers:
            for attempt in layer.pending:
                if not attempt.stalled and now - attempt.started > self.stall_timeout:
                    attempt.stalled = True
                    layer.breaker.record_failure()
                    log.warning(
                        "layer %s has not answered for %.2g s: counted as a failure",
                        layer.source,
                        self.stall_timeout,
                    )

    async def aclose(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
        for layer in self.layers:
            await layer.dispenser.aclose()


def _judged(
    layer: Layer, attempt: _Attempt, exc: Exception, budget: float
) -> tuple[Layer, ReserveUnavailable] | None:
    """Count a failed attempt against its layer (unless the watchdog already counted it as
    stalled), and say it when that is news; the reserve's refusal is returned, to be the
    503's reason."""
    if not attempt.stalled:
        layer.breaker.record_failure()
    if isinstance(exc, ReserveUnavailable):
        return (layer, exc)  # expected while it lasts: the 503 says it, not the log
    if isinstance(exc, LayerUnavailable | TimeoutError):
        reason = str(exc) or f"no answer in {budget:.3g} s"
        log.warning("layer %s could not allocate: %s", layer.source, reason)
    else:
        # A bug or an untranslated driver error must not become a 500: the range was not
        # returned, so trying the next layer is safe.
        log.error("layer %s failed unexpectedly", layer.source, exc_info=exc)
    return None
