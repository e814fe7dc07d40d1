"""The background work of each worker process, once per ``KEYGEN_PROBE_INTERVAL``.

Every worker probes its layers (a dead layer shows without traffic, and no user request pays
for finding out), asks the ledger for the namespaces with the least headroom now and then,
checks its own new grants in the ledger's audit trail (``audit.py``), and publishes its
state for the instance's figures. One worker per data dir (whichever holds
the history lock) also records the history point of that second and evaluates the alerts,
and publishes the alerts for the other workers to serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Final

import msgspec

from keygen.alerts import Alerts
from keygen.audit import Auditor
from keygen.health import HealthReporter
from keygen.history import History
from keygen.metrics import InstanceView
from keygen.snapshots import AlertsDocument

__all__ = ["Probes"]

log = logging.getLogger(__name__)

#: Probes between two headroom queries (a query reads every namespace of the ledger).
HEADROOM_EVERY: Final = 10
#: Namespaces whose headroom is published: those with the least.
HEADROOM_NAMESPACES: Final = 10
ALERTS_FILE: Final = "alerts.json"

_decode_alerts = msgspec.json.Decoder(AlertsDocument).decode


class Probes:
    def __init__(
        self,
        reporter: HealthReporter,
        *,
        interval: float,
        run_dir: Path | None,
        history: History,
        alerts: Alerts,
        auditor: Auditor,
    ) -> None:
        self.reporter = reporter
        self.interval = interval
        self.run_dir = run_dir
        self.history = history
        self.alerts = alerts
        self.auditor = auditor
        self.leading = False
        self._ticks = 0
        self._task: asyncio.Task[None] | None = None
        self._ledger_work: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        next_at = time.monotonic()
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("the background probe failed; trying again next interval")
            next_at += self.interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def tick(self) -> InstanceView:
        """One round: probe, publish, and (when leading) record the history and alerts."""
        if self._ticks % HEADROOM_EVERY == 0 and (
            self._ledger_work is None or self._ledger_work.done()
        ):
            # Beside the probe, not before it: a slow ledger must not delay the pings that
            # close the breakers of the layers that are back.
            self._ledger_work = asyncio.get_running_loop().create_task(self._read_ledger())
        self._ticks += 1
        await self.reporter.refresh()
        view = self.reporter.instance(publish=True)
        self.leading = self.leading or self.history.try_lead()
        if self.leading:
            now = time.time()
            self.history.record(view, now)
            document = self.alerts.evaluate(view, now)
            if self.run_dir is not None:
                path = self.run_dir / ALERTS_FILE
                path.with_suffix(".tmp").write_bytes(msgspec.json.encode(document))
                path.with_suffix(".tmp").replace(path)
        return view

    async def _read_ledger(self) -> None:
        await self._refresh_headroom()
        await self._audit()

    async def _audit(self) -> None:
        try:
            async with asyncio.timeout(10 * self.reporter.timeout):
                await self.auditor.check()
        except Exception as exc:  # a ledger that is down: the next round catches up
            log.debug("audit round skipped: %s", exc)
        self.reporter.audit_violations = self.auditor.violations

    async def _refresh_headroom(self) -> None:
        try:
            async with asyncio.timeout(self.reporter.timeout):
                statuses = await self.reporter.ledger.status()
        except Exception as exc:  # a ledger that is down: keep what was known
            log.debug("headroom not refreshed: %s", exc)
            return
        least = sorted(statuses, key=lambda s: s.headroom)[:HEADROOM_NAMESPACES]
        self.reporter.headroom = {s.namespace: s.headroom for s in least}

    def alerts_document(self) -> AlertsDocument:
        """The alerts as the leading worker last evaluated them."""
        if self.leading or self.run_dir is None:
            return self.alerts.document()
        with contextlib.suppress(OSError, msgspec.DecodeError):
            return _decode_alerts((self.run_dir / ALERTS_FILE).read_bytes())
        return self.alerts.document()  # nobody has evaluated yet: every rule inactive

    async def aclose(self) -> None:
        for task in (self._task, self._ledger_work):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.alerts.aclose()
        self.history.close()
