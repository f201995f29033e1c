"""`kit db check`: least privilege, checked by what each role can do on the live server, one line per rule.

It connects as each role the kit runs with and asks the server what that role can do, trying the
escapes rather than reading flags:

- **the run-time role** (DATABASE_URL, `kit_app`): not a superuser, no BYPASSRLS, cannot create roles
  or databases, owns no table; a member of no other role (a membership lends that role's rights:
  `pg_execute_server_program` is a shell, `kit_owner` the schema); `SET ROLE` to the owner, the door
  and any superuser refused; the server's files unreadable; `row_security = off` refused (it is
  subject to every policy); no per-role or per-database setting in force (`ALTER ROLE kit_app SET
  search_path ...` changes every later connection);
- **every tenant table**: row-level security enabled and forced, and its policies exactly those the
  models generate (`Meta.tenant`): each generated policy is made on a temporary copy of the table
  (same name, rolled back) and the server's own rendering of both is compared, so an extra permissive
  policy or `kit_tenant_select` rewritten to `USING (true)` is found;
- **the door** (DATABASE_DOOR_URL, `kit_door`, for `all_tenants()`): not the owner and no superuser,
  owns nothing, a member of `kit_app` only, with BYPASSRLS (else `all_tenants()` sees one tenant);
- **the owner** (DATABASE_OWNER_URL): not a superuser (migrations need no more than ownership);
- **Better Auth's role** (`kit_auth`): its attributes, tables, memberships and stored settings, read
  from the catalog through the run-time role's connection (Better Auth's URL is not the kit's to know);
- full-text matching LEAKPROOF, and DATABASE_POOLER matching what answers at DATABASE_URL.

Every question runs in a transaction that is rolled back, each statement bounded by
`CHECK_TIMEOUT_MS`. `kit.roles.tenant_policy_problems` is also what `kit migrate verify` reports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import psycopg2
from peewee import Model

from kit.config import Settings, mask_password
from kit.db.contract import cannot_connect
from kit.roles import APP, AUTH, DOOR, LEAKPROOF_SQL, OWNER, policy_statements, tenant_policy_problems, tenant_rule

ROLE_SQL = """
SELECT r.rolname, r.rolsuper, r.rolbypassrls, r.rolcreaterole, r.rolcreatedb,
       (SELECT array_agg(c.relname ORDER BY c.relname) FROM pg_class c
        WHERE c.relowner = r.oid AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
          AND c.relnamespace = 'public'::regnamespace)
FROM pg_roles r WHERE r.rolname = coalesce(%s, current_user)
"""
MEMBER_OF_SQL = """
SELECT coalesce(array_agg(r.rolname ORDER BY r.rolname), '{}') FROM pg_roles r
WHERE r.rolname NOT IN (%(role)s, 'pg_database_owner') AND pg_has_role(%(role)s, r.oid, 'MEMBER')
"""
# Another role's own settings, as the catalog keeps them (a role checked without a connection of its own).
STORED_SETTINGS_SQL = """
SELECT coalesce(array_agg(c ORDER BY c), '{}') FROM pg_db_role_setting s, unnest(s.setconfig) c
WHERE s.setrole = (SELECT oid FROM pg_roles WHERE rolname = %s)
  AND s.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))
  AND c NOT LIKE 'client\\_connection\\_check\\_interval=%%'
"""
SUPERUSERS_SQL = "SELECT coalesce(array_agg(rolname ORDER BY rolname), '{}') FROM pg_roles WHERE rolsuper"
ROLE_SETTINGS_SQL = """
SELECT coalesce(array_agg(name || ' = ' || setting || ' (' || source || ')' ORDER BY name), '{}') FROM pg_settings
WHERE source IN ('user', 'database', 'database user') AND name <> 'client_connection_check_interval'
"""
POLICIES_SQL = """
SELECT coalesce(array_agg(row(
           p.polname, p.polcmd, p.polpermissive,
           (SELECT array_agg(a.rolname ORDER BY a.rolname) FROM pg_roles a WHERE a.oid = ANY (p.polroles)),
           coalesce(pg_get_expr(p.polqual, p.polrelid), ''),
           coalesce(pg_get_expr(p.polwithcheck, p.polrelid), ''))::text
         ORDER BY p.polname), '{}')
FROM pg_policy p WHERE p.polrelid = %s::regclass
"""
CHECK_TIMEOUT_MS = 10_000  # each question is a catalog read or a refused statement: bounded like any the kit sends
MEMBERSHIPS = {APP: set(), AUTH: set(), DOOR: {APP}}  # the roles each may act as: the door has the app's rights


@dataclass(frozen=True)
class Finding:
    """One rule's outcome: `ok`, and a line that says what was found."""

    ok: bool
    text: str


class _Session:
    """One role's connection for the check: statements in one transaction, each tried in a savepoint."""

    def __init__(self, url: str) -> None:
        try:
            self.conn = psycopg2.connect(url, connect_timeout=10, application_name="kit-check",
                                         options=f"-c statement_timeout={CHECK_TIMEOUT_MS}")
        except psycopg2.Error as exc:
            raise cannot_connect(mask_password(url), exc) from None
        self.cursor = self.conn.cursor()  # psycopg2 opens the transaction; close() rolls it back

    def one(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> Any:
        """The first row of `sql`."""
        self.cursor.execute(sql, params)
        return self.cursor.fetchone()

    def refused(self, sql: str) -> bool:
        """True when the server refuses `sql`; whatever it did is rolled back either way."""
        self.cursor.execute("SAVEPOINT kit_check")
        try:
            self.cursor.execute(sql)
            return False
        except psycopg2.Error:
            return True
        finally:
            self.cursor.execute("ROLLBACK TO SAVEPOINT kit_check")

    def close(self) -> None:
        """Roll everything back and disconnect."""
        self.conn.close()


def check(settings: Settings, models: Iterable[type[Model]]) -> list[Finding]:
    """Every rule, checked as each role on the configured server."""
    from kit.db import resolve_url

    models = list(models)
    url = resolve_url(settings, APP)
    session = _Session(url)
    try:
        findings = _run_time_role(session, models, expected=APP)
        findings.append(_leakproof(session))
        findings += _policies(session, models)
        findings += _better_auth(session)
    finally:
        session.close()
    findings.append(_pooler_finding(settings, url))
    findings += _door(settings, resolve_url(settings, DOOR), resolve_url(settings, OWNER), models)
    findings += _owner(resolve_url(settings, OWNER))
    return findings


def _run_time_role(session: _Session, models: list[type[Model]], expected: str) -> list[Finding]:
    """What a role every policy must bind (the application's, Better Auth's) can do."""
    role, superuser, bypass, createrole, createdb, owned = session.one(ROLE_SQL, (None,))
    bypass = bypass or superuser  # a superuser passes every policy, whatever its BYPASSRLS says
    findings = [
        Finding(not superuser, f"run-time role {role} is {'a superuser' if superuser else 'not a superuser'}"),
        Finding(not bypass, f"{role} {'bypasses' if bypass else 'cannot bypass'} row-level security"),
        Finding(not (createrole or createdb),
                f"{role} {'may' if createrole or createdb else 'cannot'} create roles or databases"),
        Finding(not owned, f"{role} owns {len(owned)} table(s): {', '.join(owned[:5])}" if owned
                else f"{role} owns no table"),
    ]
    findings += _memberships(session, role, MEMBERSHIPS.get(expected, set()))
    findings += _escapes(session, role, [OWNER, DOOR] if role != DOOR else [OWNER])
    table = next((rule.table for rule in map(tenant_rule, models) if rule is not None and not rule.open), None)
    if table is not None and not bypass:
        off = session.refused(f'SET LOCAL row_security = off; SELECT 1 FROM "{table}" LIMIT 1')
        findings.append(Finding(off, f"{role} cannot read past row-level security with row_security = off" if off
                                else f"{role} reads {table} with row_security = off: no policy binds it"))
    findings.append(_settings(session, role))
    return findings


def _better_auth(session: _Session) -> list[Finding]:
    """Better Auth's role, from the catalog: what it is, owns, may act as, and starts with."""
    found = session.one(ROLE_SQL, (AUTH,))
    if found is None:
        return [Finding(False, f"role {AUTH} does not exist: `kit db roles`")]
    role, superuser, bypass, createrole, createdb, owned = found
    flags = [what for what, on in (("a superuser", superuser), ("BYPASSRLS", bypass), ("CREATEROLE", createrole),
                                   ("CREATEDB", createdb), (f"the owner of {', '.join((owned or [])[:3])}", owned))
             if on]
    findings = [Finding(not flags, f"{role} is {' and '.join(flags)}" if flags
                        else f"{role} is no superuser, cannot bypass row-level security and owns no table")]
    findings += _memberships(session, role, MEMBERSHIPS[AUTH])
    stored = session.one(STORED_SETTINGS_SQL, (role,))[0]
    findings.append(Finding(not stored, f"{role} starts every connection with {'; '.join(stored)}: ALTER ROLE "
                            f"{role} RESET ..." if stored else f"{role} starts with no per-role setting"))
    return findings


def _memberships(session: _Session, role: str, allowed: set[str]) -> list[Finding]:
    """A role's memberships lend it the rights of every role it is a member of, transitively."""
    extra = [name for name in session.one(MEMBER_OF_SQL, {"role": role})[0] if name not in allowed]
    if not extra:
        return [Finding(True, f"{role} acts with no other role's rights" if not allowed
                        else f"{role} acts with {', '.join(sorted(allowed))}'s rights only")]
    return [Finding(False, f"{role} is a member of {name}, so it has that role's rights; REVOKE {name} FROM {role}")
            for name in extra]


def _escapes(session: _Session, role: str, targets: list[str]) -> list[Finding]:
    """SET ROLE to more powerful roles, and the server's files: each must be refused."""
    superusers = [name for name in session.one(SUPERUSERS_SQL)[0] if name != role]
    findings = []
    for target in dict.fromkeys([*targets, *superusers]):
        if not session.refused("SET ROLE " + _quoted(target)):
            findings.append(Finding(False, f"{role} can SET ROLE {target}"))
    if not session.refused("SELECT pg_read_file('PG_VERSION', 0, 1)"):
        findings.append(Finding(False, f"{role} can read the server's files (pg_read_file)"))
    return findings or [Finding(True, f"{role} cannot SET ROLE to the owner, the door or a superuser, nor read "
                                      "the server's files")]


def _quoted(name: str) -> str:
    """A role name from the catalog as an SQL identifier (quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'


def _settings(session: _Session, role: str) -> Finding:
    """Settings every connection of the role starts with (ALTER ROLE / ALTER DATABASE ... SET)."""
    found = session.one(ROLE_SETTINGS_SQL)[0]
    if not found:
        return Finding(True, f"{role} starts with no per-role or per-database setting")
    return Finding(False, f"{role} starts every connection with {'; '.join(found)}: ALTER ROLE {role} RESET ... "
                          "(a setting there changes every process, search_path included)")


def _leakproof(session: _Session) -> Finding:
    leakproof = session.one(LEAKPROOF_SQL)[0]
    return Finding(leakproof, "full-text matching is LEAKPROOF: hybrid search keeps its GIN index under row-level "
                   "security" if leakproof else "full-text matching is not LEAKPROOF: hybrid search scans a "
                   "tenant's rows (`kit db roles` as a superuser)")


def _policies(session: _Session, models: list[type[Model]]) -> list[Finding]:
    """Each tenant table's policies against those the models generate, as the server renders both."""
    run: Callable[..., Any] = session.one
    problems = tenant_policy_problems(run, models)
    for model in models:
        rule = tenant_rule(model)
        if rule is None or session.one("SELECT to_regclass(%s)", (f'public."{rule.table}"',))[0] is None:
            continue
        live = session.one(POLICIES_SQL, (f'public."{rule.table}"',))[0]
        made = _generated_policies(session, rule)
        if made is not None and sorted(live) != sorted(made):
            extra = sorted(set(live) - set(made))
            problems.append(f"tenant table {rule.table}'s policies differ from what its model generates "
                            f"({len(extra)} not generated, e.g. {extra[0] if extra else 'one missing'}): its rows "
                            "may reach other organizations; apply its migration's kit_ops.tenant_policies again")
    return [Finding(False, p) for p in problems] or [
        Finding(True, "every tenant table has forced row-level security and exactly the policies its model generates")]


def _generated_policies(session: _Session, rule: Any) -> list[str] | None:
    """The policies `rule` generates, rendered by the server on a temporary copy of its table (rolled back)."""
    session.cursor.execute("SAVEPOINT kit_policies")
    try:
        session.cursor.execute(f'CREATE TEMP TABLE "{rule.table}" (LIKE public."{rule.table}")')
        for statement in policy_statements(rule):
            session.cursor.execute(statement)  # the temporary table comes first in the search path
        return session.one(POLICIES_SQL, (f'pg_temp."{rule.table}"',))[0]
    except psycopg2.Error:
        return None  # no TEMPORARY privilege: the names and flags above are what is checked
    finally:
        session.cursor.execute("ROLLBACK TO SAVEPOINT kit_policies")


def _door(settings: Settings, url: str, owner_url: str, models: list[type[Model]]) -> list[Finding]:
    """The door of `all_tenants()`: across tenants, nothing more."""
    session = _Session(url)
    try:
        role, superuser, bypass, _, _, owned = session.one(ROLE_SQL, (None,))
        if owned or superuser:
            where = "DATABASE_DOOR_URL" if settings.door_url else "DATABASE_OWNER_URL, as DATABASE_DOOR_URL is unset"
            what = "is a superuser" if superuser else "owns the schema"
            return [Finding(False, f"the door of all_tenants() ({where}) connects as {role}, which {what}: set "
                                   "DATABASE_DOOR_URL to kit_door's URL, so the application never holds the owner's")]
        findings = [Finding(bypass, f"the door {role} {'bypasses' if bypass else 'cannot bypass'} row-level security"
                            + ("" if bypass else ": all_tenants() sees one tenant; `kit db roles`"))]
        findings += _memberships(session, role, MEMBERSHIPS[DOOR])
        findings += _escapes(session, role, [OWNER])
        findings.append(_settings(session, role))
        return findings
    finally:
        session.close()


def _owner(url: str) -> list[Finding]:
    """The owner runs migrations: ownership is all it needs."""
    session = _Session(url)
    try:
        role, superuser, *_ = session.one(ROLE_SQL, (None,))
        return [Finding(not superuser, f"the owner (DATABASE_OWNER_URL) connects as {role}, "
                        + ("a superuser: use kit_owner, which owns the schema and needs no more" if superuser
                           else "not a superuser"))]
    finally:
        session.close()


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
