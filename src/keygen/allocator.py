"""The allocator: tries each layer in order, within a time budget, behind a circuit breaker.

It knows dispensers only through the ``Dispenser`` protocol. A layer that fails, times out or
has its breaker open is skipped and the next one is tried; a request error (bad size,
exhausted namespace) is the same whichever layer serves, so it is raised at once. When no
layer serves within ``ALLOCATION_TIMEOUT`` the request fails with ``ServiceUnavailable``,
whose ``Retry-After`` is when the first breaker will let a probe through.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from keygen.breaker import CircuitBreaker
from keygen.dispensers.base import Dispenser
from keygen.errors import LayerUnavailable, RequestError, ServiceUnavailable
from keygen.metrics import AllocationMetrics
from keygen.ranges import IdRange

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Layer:
    """A dispenser, its breaker, and the most of the budget one attempt on it may take."""

    dispenser: Dispenser
    breaker: CircuitBreaker
    timeout: float

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
        self, layers: Sequence[Layer], *, timeout: float, metrics: AllocationMetrics
    ) -> None:
        if not layers:
            raise ValueError("an allocator needs at least one layer")
        self.layers = tuple(layers)
        self.timeout = timeout
        self.metrics = metrics

    async def allocate(self, namespace: str, size: int) -> Allocation:
        # perf_counter, not loop.time(): uvloop's clock ticks in whole milliseconds.
        started = time.perf_counter()
        deadline = started + self.timeout
        for layer in self.layers:
            if not layer.breaker.allow():
                continue
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(min(layer.timeout, remaining)):
                    id_range = await layer.dispenser.allocate(namespace, size)
            except RequestError:
                layer.breaker.record_success()  # the layer answered; the request was at fault
                self.metrics.record_failure(time.perf_counter() - started)
                raise
            except (LayerUnavailable, TimeoutError) as exc:
                layer.breaker.record_failure()
                log.warning("layer %s could not allocate: %s", layer.source, exc or "timed out")
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
            return Allocation(id_range, layer.source)
        self.metrics.record_failure(time.perf_counter() - started)
        raise ServiceUnavailable(
            "no layer could allocate within the time budget", retry_after=self.retry_after()
        )

    def retry_after(self) -> int:
        """Whole seconds until some layer will be tried again (at least 1)."""
        return max(1, math.ceil(min(layer.breaker.retry_after() for layer in self.layers)))

    async def aclose(self) -> None:
        for layer in self.layers:
            await layer.dispenser.aclose()
