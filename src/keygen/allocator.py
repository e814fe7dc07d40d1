"""The allocator: tries each layer in order, within a time budget, behind a circuit breaker.

It knows dispensers only through the ``Dispenser`` protocol. A layer that fails, times out or
has its breaker open is skipped and the next one is tried; a request error (bad size,
exhausted namespace) is the same whichever layer serves, so it is raised at once. When no
layer serves within ``ALLOCATION_TIMEOUT`` the request fails with ``ServiceUnavailable``,
whose ``Retry-After`` is when the first breaker will let a probe through.

A layer may be *guaranteed* part of the budget: the layers before it give up that long before
the deadline, so a hanging backend early in the order cannot starve a later layer (the
emergency reserve) of its turn.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from keygen.breaker import CircuitBreaker
from keygen.dispensers.base import Dispenser
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

    @property
    def source(self) -> str:
        return self.dispenser.source


@dataclass(frozen=True, slots=True)
class Allocation:
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
    ) -> None:
        """``on_allocated(namespace, size)`` is called after every success, whichever layer
        served (the emergency reserve learns the namespaces served and their rate from it)."""
        if not layers:
            raise ValueError("an allocator needs at least one layer")
        self.layers = tuple(layers)
        self.timeout = timeout
        self.metrics = metrics
        self.on_allocated = on_allocated
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
            # Checked before allow(): a half-open breaker's probe must not be taken and dropped.
            remaining = deadline - time.perf_counter() - kept
            if remaining <= 0 or not layer.breaker.allow():
                continue
            refused = None
            try:
                async with asyncio.timeout(min(layer.timeout, remaining)):
                    id_range = await layer.dispenser.allocate(namespace, size)
            except RequestError:
                layer.breaker.record_success()  # the layer answered; the request was at fault
                self.metrics.record_failure(time.perf_counter() - started)
                raise
            except (LayerUnavailable, TimeoutError) as exc:
                layer.breaker.record_failure()
                if isinstance(exc, ReserveUnavailable):
                    refused = (layer, exc)
                    continue  # expected while it lasts: the 503 says it, not the log
                log.warning(
                    "layer %s could not allocate: %s",
                    layer.source,
                    str(exc) or f"no answer in {min(layer.timeout, remaining):.3g} s",
                )
                continue
            except Exception:
                # A bug or an untranslated driver error must not become a 500: the range was
                # not returned, so trying the next layer is safe.
                layer.breaker.record_failure()
                log.exception("layer %s failed unexpectedly", layer.source)
                continue
            except BaseException:  # cancelled: the layer was not judged
                layer.breaker.abandon_probe()
                raise
            layer.breaker.record_success()
            self.metrics.record_success(layer.source, size, time.perf_counter() - started)
            if self.on_allocated is not None:
                self.on_allocated(namespace, size)
            return Allocation(id_range, layer.source)
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

    def retry_after(self, skip: Layer | None = None) -> int:
        """Whole seconds until some layer (other than ``skip``) will be tried again (at
        least 1)."""
        waits = [layer.breaker.retry_after() for layer in self.layers if layer is not skip]
        return max(1, math.ceil(min(waits, default=0.0)))

    async def aclose(self) -> None:
        for layer in self.layers:
            await layer.dispenser.aclose()
