"""`kit db check`: least privilege, checked against the live server, one line per rule.

Connected as the run-time role (DATABASE_URL), it asks the server:

- the role is not a superuser, cannot bypass row-level security, create roles or databases;
- it owns no table (an owner is exempt from its own table's policies unless they are forced, and
  may switch them off);
- every tenant table (`Meta.tenant`) has row-level security enabled and forced, with its policies;
- DATABASE_POOLER says what is really there: PgBouncer answers a connection to its admin database
  `pgbouncer`, PostgreSQL says no such database.

`kit.roles.tenant_policy_problems` is also what `kit migrate verify` reports for tenant tables.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg2
from peewee import Model

from kit.config import Settings, mask_password
from kit.errors import (
    DatabaseUnavailable,
    describe,
)
from kit.roles import LEAKPROOF_SQL, tenant_policy_problems

ROLE_SQL = """
SELECT r.rolname, r.rolsuper, r.rolbypassrls, r.rolcreaterole, r.rolcreatedb,
       (SELECT array_agg(c.relname ORDER BY c.relname) FROM pg_class c
        WHERE c.relowner = r.oid AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
          AND c.relnamespace = 'public'::regnamespace)
FROM pg_roles r WHERE r.rolname = current_user
"""
CHECK_TIMEOUT_MS = 10_000  # each question is a catalog read: bounded like any statement the kit sends


@dataclass(frozen=True)
class Finding:
    """One rule's outcome: `ok`, and a line that says what was found."""

    ok: bool
    text: str


def check(settings: Settings, models: Iterable[type[Model]]) -> list[Finding]:
    """Every rule, checked as the run-time role on the configured server."""
    from kit.db import resolve_url
    from kit.roles import APP

    url = resolve_url(settings, APP)
    try:
        conn = psycopg2.connect(url, connect_timeout=10, application_name="kit-check",
                                options=f"-c statement_timeout={CHECK_TIMEOUT_MS}")
    except psycopg2.Error as exc:
        reason = describe(exc)
        raise DatabaseUnavailable(f"could not connect to the database at {mask_password(url)}: {reason}") from None
    try:
        conn.autocommit = True
        with conn.cursor() as cursor:
            def run(sql: str, params: tuple[Any, ...] = ()) -> Any:
                cursor.execute(sql, params)
                return cursor.fetchone()

            role, superuser, bypass, createrole, createdb, owned = run(ROLE_SQL)
            bypass = bypass or superuser  # a superuser passes every policy, whatever its BYPASSRLS says
            findings = [
                Finding(not superuser, f"run-time role {role} is {'a superuser' if superuser else 'not a superuser'}"),
                Finding(not bypass, f"{role} {'bypasses' if bypass else 'cannot bypass'} row-level security"),
                Finding(not (createrole or createdb),
                        f"{role} {'may' if createrole or createdb else 'cannot'} create roles or databases"),
                Finding(not owned, f"{role} owns {len(owned)} table(s): {', '.join(owned[:5])}" if owned
                        else f"{role} owns no table"),
            ]
            leakproof = run(LEAKPROOF_SQL)[0]
            findings.append(Finding(leakproof, "full-text matching is LEAKPROOF: hybrid search keeps its GIN index "
                                    "under row-level security" if leakproof else "full-text matching is not "
                                    "LEAKPROOF: hybrid search scans a tenant's rows (`kit db roles` as a superuser)"))
            problems = tenant_policy_problems(run, models)
            findings += [Finding(False, p) for p in problems] or [
                Finding(True, "every tenant table has forced row-level security and its policies")]
    finally:
        conn.close()
    findings.append(_pooler_finding(settings, url))
    return findings


def _pooler_finding(settings: Settings, url: str) -> Finding:
    """Whether DATABASE_POOLER matches what answers at DATABASE_URL."""
    params = psycopg2.extensions.parse_dsn(url)
    params.update(dbname="pgbouncer", connect_timeout="5")
    try:
        psycopg2.connect(**params).close()
        is_pgbouncer = True
    except psycopg2.Error as exc:
        is_pgbouncer = 'database "pgbouncer" does not exist' not in str(exc)
    said = f"DATABASE_POOLER={settings.pooler}" if settings.pooler else "DATABASE_POOLER unset"
    there = "PgBouncer" if is_pgbouncer else "PostgreSQL itself"
    return Finding(is_pgbouncer == bool(settings.pooler), f"{said}, and {mask_password(url)} is {there}")
