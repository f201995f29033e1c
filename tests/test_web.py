"""The example FastAPI service (examples/fastapi_service), started with uvicorn and driven over HTTP.

- Sync and async endpoints under concurrent clients give every connection back (the FastAPI
  dependency pattern that leaked the pool is gone: nothing is held between statements).
- Under backends killed every second and the server restarted once: every failure is a 503 from the kit's family (never a 500),
  and the database matches the clients' ledger exactly: every spend answered 200 is there once,
  every spend answered 503 with its outcome known is not there, nothing is there twice.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psycopg2
import pytest
from helpers import wait_until

from kit.config import load_settings
from kit.models import AiUsage, Organization, OrgCredit
from kit.tenancy import tenant

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = 50
FAULT_SECONDS = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def service(test_db_url, door_url):
    """The example service under uvicorn on the test database (the run-time role), its base URL."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": test_db_url, "DATABASE_DOOR_URL": door_url,  # not the environment's door
           "DATABASE_POOL_MAX": "10", "DATABASE_POOL_MIN": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "examples.fastapi_service.app:app", "--port", str(port),
                             "--log-level", "warning", "--timeout-graceful-shutdown", "5"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{base}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return proc.poll() is not None

    assert wait_until(up, timeout=30) and proc.poll() is None, proc.stdout.read() if proc.poll() is not None else ""
    yield base
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:  # requests still waiting on the database: say so, with what it logged
        proc.kill()
        out, _ = proc.communicate(timeout=10)
        out += "\n(uvicorn did not stop within 10 s of SIGTERM; killed)"
    Path(os.environ.get("KIT_TEST_SERVICE_LOG", "/dev/null")).write_text(out)
    assert "Traceback" not in out or "KeyboardInterrupt" in out, out[-3000:]


@pytest.fixture
def org():
    organization = Organization.create(name="Web", slug=f"web-{secrets.token_hex(4)}")
    OrgCredit.grant(organization, 1_000_000)
    return organization


async def drive(base: str, org_id: str, seconds: float, clients: int) -> list[tuple[str, int, dict]]:
    """`clients` concurrent clients spending one credit at a time, alternating sync and async endpoints."""
    results: list[tuple[str, int, dict]] = []
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
        async def one(n: int) -> None:
            i = 0
            while time.monotonic() < deadline:
                request = f"c{n}-{i}"
                path = "sync" if (n + i) % 2 else "async"
                response = await client.post(f"/{path}/orgs/{org_id}/spend", json={"request": request})
                results.append((request, response.status_code, response.json()))
                i += 1
                if i % 10 == 0:
                    await client.get(f"/{path}/orgs/{org_id}/members")

        await asyncio.gather(*(one(n) for n in range(clients)))
    return results


def restart_server() -> bool:
    """Stop the server under test (the embedded one; behind PgBouncer, the one PgBouncer fronts) and start it."""
    from kit import embedded

    if os.environ.get("KIT_TEST_ADMIN_URL"):  # a server of someone else's: not ours to restart
        return True
    data_dir = load_settings().data_dir
    stopped = embedded.stop(data_dir)
    embedded.start(data_dir)
    return stopped


def ledger_rows(org) -> Counter:
    with tenant(org):
        return Counter(u.operation for u in AiUsage.select(AiUsage.operation)
                       .where((AiUsage.model == "ledger") & (AiUsage.organization == org)))


def test_sync_and_async_endpoints_give_every_connection_back(service, org):
    results = asyncio.run(drive(service, str(org.id), seconds=4, clients=20))
    assert {status for _, status, _ in results} == {200}
    pools = httpx.get(f"{service}/pool").json()
    assert pools["sync"]["in_use"] == 0 and pools["async"]["in_use"] == 0, pools
    assert sum(ledger_rows(org).values()) == len(results)
    assert OrgCredit.balance_of(org) == 1_000_000 - len(results)


def test_backends_killed_every_second_and_a_server_restart_give_503s_only_and_an_exact_ledger(
        service, org, test_admin_url):
    dbname = urlsplit(test_admin_url).path.lstrip("/")
    stop = threading.Event()
    kills, restarts = [], []

    def kill_all() -> int:
        with psycopg2.connect(test_admin_url, application_name="kit-test-killer") as conn, conn.cursor() as cur:
            cur.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s "
                        "AND application_name = 'kit' AND pid <> pg_backend_pid()", (dbname,))
            return cur.fetchone()[0]

    def killer() -> None:
        started = time.monotonic()
        while not stop.wait(1.0):
            if not restarts and time.monotonic() - started > FAULT_SECONDS / 2:
                restarts.append(restart_server())  # once, halfway: every connection ends, none opens for a while
                continue
            try:
                kills.append(kill_all())
            except psycopg2.OperationalError:  # the server is still coming back
                pass

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        results = asyncio.run(drive(service, str(org.id), seconds=FAULT_SECONDS, clients=CLIENTS))
    finally:
        stop.set()
        thread.join()
    statuses = Counter(status for _, status, _ in results)
    print(f"requests {len(results)}: {dict(statuses)}; backends killed {sum(kills)}; restarts {len(restarts)}")
    assert set(statuses) <= {200, 503}, statuses  # never a 500
    assert sum(kills) >= FAULT_SECONDS and restarts == [True]  # the faults happened
    rows = ledger_rows(org)
    assert max(rows.values(), default=0) == 1, "a spend was recorded twice"
    answered = {request for request, status, _ in results if status == 200}
    refused = {request for request, status, body in results if status == 503 and not body.get("outcome_unknown")}
    assert answered <= set(rows), "a spend answered 200 is missing"
    assert not refused & set(rows), "a spend answered 503 (nothing committed) is there"
    assert OrgCredit.balance_of(org) == 1_000_000 - sum(rows.values())  # balance and usage rows agree
    assert statuses[200] > len(results) / 2
    unavailable = [body for _, status, body in results if status == 503]
    unknown = [body for body in unavailable if body.get("outcome_unknown")]
    print(f"503s {len(unavailable)}: {Counter(b['error'] for b in unavailable)}; outcome unknown {len(unknown)}")
    assert all(body["error"] == "SessionLost" for body in unknown)  # a refused BEGIN or connection never says it
    assert not any(word in str(body) for body in unavailable for word in ("kit_app", "host=", ".s.PGSQL", "kit_test"))


def test_every_kit_error_is_a_fitting_status_and_the_dependency_shapes_work(service, org):
    members = httpx.get(f"{service}/sync/orgs/{org.id}/members").json()["members"]
    for _ in range(50):  # an async dependency confines the request; a held connection_context is harmless
        got = httpx.get(f"{service}/dep/orgs/{org.id}/members")
        assert got.status_code == 200 and got.json() == {"members": members}, got.text
    pools = httpx.get(f"{service}/pool").json()
    assert pools["sync"]["in_use"] == 0, pools
    slug = httpx.get(f"{service}/slug/{org.slug}/members")  # a slug where an id belongs
    assert slug.status_code == 422 and slug.json()["error"] == "ArgumentError", slug.text
    assert "expected the row (a model instance) or its id" in slug.json()["detail"]
    missing = httpx.post(f"{service}/invitations/{uuid.uuid4()}/accept", params={"user": str(uuid.uuid4())})
    assert missing.status_code == 404 and missing.json()["error"] == "InvitationNotFound", missing.text
    broke = httpx.post(f"{service}/sync/orgs/{org.id}/spend", json={"request": "too-much", "amount": 10**9})
    assert broke.status_code == 402 and broke.json()["error"] == "InsufficientCredits", broke.text


def test_a_503_body_names_no_server_role_socket_or_database():
    from kit.errors import DatabaseUnavailable, PoolExhausted, SessionLost, StatementTimeout
    from kit.web import status_of

    url = "postgresql://kit_app:pw@/kit_test_db?host=/srv/sockets&port=5432"
    for error in (DatabaseUnavailable(f"could not connect to the database at {url}: refused", url=url),
                  SessionLost("the database connection was lost (server closed the connection) ..."),
                  PoolExhausted(f"pool of {url} exhausted"), StatementTimeout("ran past its limit")):
        status, body, headers = status_of(error)
        assert status == 503 and headers == {"Retry-After": "1"}
        assert not any(word in str(body) for word in ("kit_app", "kit_test_db", "/srv/sockets", "5432", "server"))
