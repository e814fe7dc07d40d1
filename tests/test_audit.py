"""The audit trail checked for what must never be in it: by `keygen audit`, and in the
background by each instance over its own grants."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from keygen.audit import Auditor, audit_ledger
from keygen.constants import GRANT_LEASE, GRANT_RESERVE
from keygen.ledgers.base import ReserveMark
from keygen.ledgers.sqlite import LEDGER_FILENAME, SqliteLedger
from tests.support.processes import ServeProcess, keygen


def plant(ledger_file: Path, sql: str, *args: object) -> None:
    with sqlite3.connect(ledger_file) as db:
        db.execute(sql, args)


@pytest.mark.anyio
async def test_a_sound_trail_passes_and_planted_violations_are_found(tmp_path: Path) -> None:
    """Real grants pass; in a copy of the ledger, a grant overlapping another and a grant
    above the counter are each found and named, and keygen audit exits 1."""
    ledger = await SqliteLedger.open(tmp_path / "data")
    for holder in ("a", "b", "c"):
        await ledger.grant("orders", 1000, kind=GRANT_LEASE, holder=holder)
    await ledger.grant("default", 5, kind=GRANT_LEASE, holder="a")
    verdict = await audit_ledger(ledger)
    await ledger.aclose()
    assert verdict.ok and (verdict.grants, verdict.namespaces) == (4, 2), verdict.summary()
    sound = keygen("audit", env={"KEYGEN_DATA_DIR": str(tmp_path / "data")})
    assert sound.returncode == 0 and sound.stdout.startswith("OK: 4 grants in 2 namespaces")

    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "data", copy)
    insert = (
        "INSERT INTO grants (namespace, start_id, end_id, kind, holder, granted_at)"
        " VALUES (?, ?, ?, 'lease', 'intruder', 0)"
    )
    plant(copy / LEDGER_FILENAME, insert, "orders", 1500, 1600)  # inside b's lease
    plant(copy / LEDGER_FILENAME, insert, "default", 6, 10)  # above default's counter (5)
    result = keygen("audit", "--json", env={"KEYGEN_DATA_DIR": str(copy)})
    assert result.returncode == 1, result.stdout + result.stderr
    found = json.loads(result.stdout)
    kinds = sorted((v["kind"], v["namespace"]) for v in found["violations"])
    assert kinds == [("above_counter", "default"), ("overlap", "orders")]
    overlap = next(v for v in found["violations"] if v["kind"] == "overlap")
    assert "1001..2000" in overlap["detail"] and "intruder" in overlap["detail"]


@pytest.mark.anyio
async def test_the_background_audit_checks_its_own_grants(tmp_path: Path) -> None:
    """An instance's auditor finds a grant of another holder overlapping one of its own, and
    a counter that went back; a sound round finds nothing."""
    ledger = await SqliteLedger.open(tmp_path / "data")
    try:
        auditor = Auditor(ledger, holder_prefix="me")
        await ledger.grant("orders", 100, kind=GRANT_LEASE, holder="me-1")
        await ledger.grant("orders", 100, kind=GRANT_LEASE, holder="someone-else")
        assert await auditor.check() == [] and auditor.checked == 1
        await ledger.grant("orders", 100, kind=GRANT_LEASE, holder="me-1")  # 201..300
        file = tmp_path / "data" / LEDGER_FILENAME
        plant(
            file,
            "INSERT INTO grants (namespace, start_id, end_id, kind, holder, granted_at)"
            " VALUES ('orders', 250, 260, 'lease', 'someone-else', 0)",
        )
        plant(file, "UPDATE counters SET last_id = 150 WHERE namespace = 'orders'")  # was 200
        found = await auditor.check()
    finally:
        await ledger.aclose()
    assert sorted(v.kind for v in found) == ["above_counter", "counter_regressed", "overlap"]
    assert auditor.violations == 3


@pytest.mark.e2e
def test_a_running_instance_exports_what_its_audit_found(tmp_path: Path) -> None:
    """A grant planted inside a running instance's lease is found by its background audit:
    keygen_audit_violations_total rises and KeygenAuditViolation fires."""
    data = tmp_path / "data"
    env = {
        "KEYGEN_DATA_DIR": str(data),
        "KEYGEN_INSTANCE_ID": "audited",
        "KEYGEN_PROBE_INTERVAL": "0.2",
        "KEYGEN_LEASE_SIZE": "1000",
    }
    server = ServeProcess(env, log=tmp_path / "serve.log").start()
    try:
        with httpx.Client(base_url=server.url, timeout=5) as http:
            headers = {"Content-Type": "application/json"}
            http.post("/allocate", json={"size": 10}, headers=headers).raise_for_status()
            plant(
                data / LEDGER_FILENAME,
                "INSERT INTO grants (namespace, start_id, end_id, kind, holder, granted_at)"
                " VALUES ('default', 500, 510, 'lease', 'intruder', 0)",
            )
            deadline, text, alerts = time.monotonic() + 30, "", {}
            while time.monotonic() < deadline:
                text = http.get("/metrics", headers={"accept": "text/plain"}).text
                alerts = {a["name"]: a for a in http.get("/alerts").json()["alerts"]}
                if alerts["KeygenAuditViolation"]["state"] == "firing":
                    break
                time.sleep(0.1)
    finally:
        server.stop()
    assert "keygen_audit_violations_total 1.0" in text, text[-2000:]
    assert alerts["KeygenAuditViolation"]["state"] == "firing", alerts["KeygenAuditViolation"]


@pytest.mark.anyio
async def test_reserve_usage_recorded_twice_over_the_same_ids_is_a_violation(
    tmp_path: Path,
) -> None:
    """Two openings of one reserve's journal whose recorded marks share IDs (a journal copied
    or rewound, then served from) are reported as reserve_replayed; consecutive openings,
    each resuming above the last one's mark, are not, and keygen audit exits 1 on the first."""
    ledger = await SqliteLedger.open(tmp_path / "data")
    reserve = await ledger.grant("default", 1000, kind=GRANT_RESERVE, holder="a/reserve-0")
    span = ("default", reserve.start, reserve.end)
    assert await ledger.record_reserve_mark(ReserveMark(*span, "s1", "d", "a", 1, 100)) == 0
    assert await ledger.record_reserve_mark(ReserveMark(*span, "s2", "d", "a", 101, 300)) == 100
    sound = await audit_ledger(ledger)
    # A copy resumed from an earlier state of the journal (mark 100), as s2 also did.
    assert await ledger.record_reserve_mark(ReserveMark(*span, "s3", "d", "a", 101, 250)) == 300
    replayed = await audit_ledger(ledger)
    await ledger.aclose()
    assert sound.ok, sound.summary()
    assert [v.kind for v in replayed.violations] == ["reserve_replayed"]
    assert "101..300" in replayed.violations[0].detail
    assert "101..250" in replayed.violations[0].detail
    result = keygen("audit", env={"KEYGEN_DATA_DIR": str(tmp_path / "data")})
    assert result.returncode == 1 and "reserve_replayed" in result.stdout + result.stderr
