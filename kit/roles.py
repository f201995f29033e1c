"""The kit's database roles, what each may do, and the row-level security that keeps tenants apart.

| role        | is                                      | runs                                               |
|-------------|-----------------------------------------|----------------------------------------------------|
| `kit_owner` | owns the database, its schema, tables   | migrations, seeds, `kit maintain`, `all_tenants()` |
| `kit_app`   | owns nothing; DML on the kit's tables   | the application (DATABASE_URL)                     |
| `kit_door`  | owns nothing; `kit_app`'s DML, BYPASSRLS | `all_tenants()` (DATABASE_DOOR_URL)               |
| `kit_auth`  | owns nothing; DML on Better Auth's only | Better Auth (the TypeScript side)                  |

None is a superuser, none may create roles or databases or replicate. `kit_owner` has BYPASSRLS:
it owns the tables and could switch their row-level security off anyway, so this grants it nothing
more, and it lets seeds and upkeep (and binary COPY, which PostgreSQL refuses where row-level
security applies) work across tenants. `kit_door` is the application's door past the tenants: a
member of `kit_app` (so exactly its table privileges, granted table by table: INSERT and SELECT on
`audit_logs`) with BYPASSRLS, and nothing else: no ownership, so no DDL, no trigger control, no
erasing the audit log. The application thus never holds the owner's password. `kit_app` and
`kit_auth` are subject to every policy.

**Privileges are granted table by table**, never by default privileges: a table the owner makes is
reachable by the application only once a migration grants it (`kit_ops.grant_access`, written by
`pw_migrate create --auto`). So the monthly partitions `kit maintain` makes stay unreachable directly
(their rows are reached through the parent, where its policies apply), and on `audit_logs` the
application holds INSERT and SELECT only.

**Row-level security**, from `Meta.tenant` (the field that names a row's organization):

- `Meta.tenant = "organization"`: a row is the tenant's when `organization_id` is the setting
  `kit.tenant` (`kit.tenancy`); a foreign key to another tenant model (`webhook_deliveries.endpoint`)
  makes a row the tenant's when its parent row is visible; `"id"` on `organizations` itself;
- `Meta.tenant_open`: commands any context may run on every row (`organizations`: select, so a
  request can find its organization by slug before it has a tenant; insert, to create one);
- `Meta.tenant_null`: commands allowed on rows whose tenant is NULL (global feature flags and
  announcements are readable by every tenant; an audit entry about no organization can be recorded);
- `Meta.better_auth`: Better Auth's tables, whose every row `kit_auth` may reach (sign-in lists a
  user's organizations; accepting an invitation crosses tenants).

Policies are FORCEd (they bind the table's owner too unless it has BYPASSRLS) and compare with the
setting wrapped in `(SELECT ...)`, so it is evaluated once per statement, not once per row, and the
tenant's b-tree index serves the filter. On a table Citus distributes the value stands alone (Citus
takes no sub-select in such a policy; the comparison is with a stable expression, which an index
scan still evaluates once).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kit.errors import ArgumentError
from kit.tenancy import BOUND, SETTING, TRANSACTION_STAMP

OWNER, APP, AUTH, DOOR = "kit_owner", "kit_app", "kit_auth", "kit_door"
ADMIN = "admin"  # the server's superuser: only bootstraps the roles
RUN_TIME = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
ATTRIBUTES = {OWNER: "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION BYPASSRLS", APP: RUN_TIME,
              AUTH: RUN_TIME, DOOR: "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION BYPASSRLS"}
PASSWORD_VARIABLES = {OWNER: "KIT_OWNER_PASSWORD", APP: "KIT_APP_PASSWORD", AUTH: "KIT_AUTH_PASSWORD",
                      DOOR: "KIT_DOOR_PASSWORD"}
COMMANDS = ("select", "insert", "update", "delete")
CHECK_CLIENT_MS = 1000  # client_connection_check_interval of every kit role
# The tenant the current transaction was given (`kit.tenancy.statement_prefix`); NULL without one, and NULL
# for a value set in another transaction or for the session: no row.
BOUND_SETTING = (f"CASE WHEN current_setting('{BOUND}', true) = {TRANSACTION_STAMP} "
                 f"THEN current_setting('{SETTING}', true) END")
TENANT_VALUE = f"nullif({BOUND_SETTING}, '')::uuid"
# As a sub-select, evaluated once per statement (an InitPlan), not per row. Citus refuses sub-selects
# in a distributed table's policies: there the value itself (`policy_statements(distributed=True)`).
TENANT = f"(SELECT {TENANT_VALUE})"
POLICY_PREFIX = "kit_tenant_"
AUTH_POLICY = "kit_better_auth"
POLICY_SQL = """
SELECT c.relrowsecurity, c.relforcerowsecurity,
       (SELECT array_agg(p.polname::text) FROM pg_policy p WHERE p.polrelid = c.oid)
FROM pg_class c WHERE c.oid = to_regclass(%s)
"""


@dataclass(frozen=True)
class TenantRule:
    """How a table's rows belong to organizations (from the model's `Meta.tenant` options)."""

    table: str
    column: str  # the tenant column, or the foreign key to the parent
    parent: tuple[str, str] | None = None  # (parent table, its key) when the tenant is the parent's
    open: tuple[str, ...] = ()  # commands every context may run on every row
    null: tuple[str, ...] = ()  # commands allowed on rows whose tenant column is NULL
    better_auth: bool = False  # kit_auth reaches every row


def tenant_rule(model: Any) -> TenantRule | None:
    """The model's tenant rule, or None when its rows belong to no organization."""
    meta = model._meta
    name = getattr(meta, "tenant", None)
    if not name:
        return None
    field = meta.fields[name]
    parent = None
    related = getattr(field, "rel_model", None)
    if related is not None and getattr(related._meta, "tenant", None) not in (None, "id"):
        parent = (related._meta.table_name, field.rel_field.column_name)
    return TenantRule(meta.table_name, field.column_name, parent, tuple(getattr(meta, "tenant_open", ())),
                      tuple(getattr(meta, "tenant_null", ())), bool(getattr(meta, "better_auth", False)))


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _owned_by_tenant(rule: TenantRule, distributed: bool = False) -> str:
    """The condition that makes a row the current tenant's (`distributed`: in the form Citus takes)."""
    table, column = _quote(rule.table), _quote(rule.column)
    if rule.parent is None:
        return f"{column} = {TENANT_VALUE if distributed else TENANT}"
    if distributed:
        raise ArgumentError(f"{rule.table}: its rows belong to the tenant of their {rule.parent[0]} row, which a "
                            "distributed table's policy cannot look up (Citus takes no sub-select there): give it "
                            "its own organization_id")
    parent, key = rule.parent
    # The parent's own policies apply inside: its row is visible only to its tenant.
    return f"EXISTS (SELECT 1 FROM {_quote(parent)} p WHERE p.{_quote(key)} = {table}.{column})"


def policy_statements(rule: TenantRule, distributed: bool = False) -> list[str]:
    """The SQL that (re)creates a table's row-level security: enabled, forced, one policy per command.

    `distributed`: for a table Citus distributes, whose policies it copies to every shard.
    """
    table = _quote(rule.table)
    owned = _owned_by_tenant(rule, distributed)
    out = [f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY", f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY"]
    for command in COMMANDS:
        rule_sql = "true" if command in rule.open else owned
        if command in rule.null and command not in rule.open:
            rule_sql = f"({owned}) OR {_quote(rule.column)} IS NULL"
        clause = {"select": f"USING ({rule_sql})", "delete": f"USING ({rule_sql})",
                  "insert": f"WITH CHECK ({rule_sql})",
                  "update": f"USING ({rule_sql}) WITH CHECK ({rule_sql})"}[command]
        name = _quote(POLICY_PREFIX + command)
        out += [f"DROP POLICY IF EXISTS {name} ON {table}",
                f"CREATE POLICY {name} ON {table} FOR {command.upper()} TO PUBLIC {clause}"]
    out.append(f"DROP POLICY IF EXISTS {AUTH_POLICY} ON {table}")
    if rule.better_auth:
        out.append(f"CREATE POLICY {AUTH_POLICY} ON {table} FOR ALL TO {AUTH} USING (true) WITH CHECK (true)")
    return out


def drop_policy_statements(table: str) -> list[str]:
    """The SQL that removes what `policy_statements` made."""
    quoted = _quote(table)
    return [*(f"DROP POLICY IF EXISTS {_quote(POLICY_PREFIX + c)} ON {quoted}" for c in COMMANDS),
            f"DROP POLICY IF EXISTS {AUTH_POLICY} ON {quoted}",
            f"ALTER TABLE {quoted} NO FORCE ROW LEVEL SECURITY", f"ALTER TABLE {quoted} DISABLE ROW LEVEL SECURITY"]


def roles_required(*roles: str) -> str:
    """SQL that stops a migration at once, in one sentence, when one of `roles` does not exist in the database."""
    names = ", ".join(roles)
    listed = ", ".join(f"'{role}'" for role in roles)
    return (f"DO $$ BEGIN IF (SELECT count(*) FROM pg_roles WHERE rolname IN ({listed})) < {len(roles)} THEN "
            f"RAISE EXCEPTION 'the kit''s roles ({names}) do not exist in this database: make them first "
            "(kit db roles, with DATABASE_ADMIN_URL), then migrate' USING ERRCODE = 'undefined_object'; "
            "END IF; END $$")


def grant_statements(table: str, append_only: bool = False, better_auth: bool = False) -> list[str]:
    """The SQL that gives the run-time roles what they need on `table` (and takes back anything more)."""
    quoted = _quote(table)
    app = "SELECT, INSERT" if append_only else "SELECT, INSERT, UPDATE, DELETE"
    out = [f"REVOKE ALL ON {quoted} FROM {APP}, {AUTH}", f"GRANT {app} ON {quoted} TO {APP}"]
    grantees = APP
    if better_auth:
        out.append(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {quoted} TO {AUTH}")
        grantees = f"{APP}, {AUTH}"
    # the sequences of its serial and identity columns: an INSERT draws from them
    out.append(f"""DO $$ DECLARE found regclass; BEGIN
    FOR found IN SELECT d.objid::regclass FROM pg_depend d JOIN pg_class s ON s.oid = d.objid
                 WHERE d.classid = 'pg_class'::regclass AND d.refobjid = {_literal(quoted)}::regclass
                   AND s.relkind = 'S' AND d.deptype IN ('a', 'i')
    LOOP
        EXECUTE 'GRANT USAGE, SELECT ON SEQUENCE ' || found::text || ' TO {grantees}';
    END LOOP;
END $$""")
    return out


def model_access_statements(model: Any) -> list[str]:
    """Grants and row-level security for one model's table, as its Meta options say."""
    meta = model._meta
    out = grant_statements(meta.table_name, bool(getattr(meta, "append_only", False)),
                           bool(getattr(meta, "better_auth", False)))
    rule = tenant_rule(model)
    return out + (policy_statements(rule) if rule is not None else [])


def tenant_policy_problems(run: Callable[[str, tuple[Any, ...]], Any], models: Iterable[Any]) -> list[str]:
    """What each tenant table lacks of its row-level security (`run(sql, params)` returns one row)."""
    problems = []
    for model in models:
        rule = tenant_rule(model)
        if rule is None:
            continue
        row = run(POLICY_SQL, (f'"{rule.table}"',))
        if row is None:
            continue  # not created yet: drift checks name a missing table
        enabled, forced, policies = row
        missing = sorted(f"{POLICY_PREFIX}{c}" for c in COMMANDS if f"{POLICY_PREFIX}{c}" not in (policies or []))
        if not enabled or not forced or missing:
            lacks = [*(["row-level security enabled"] if not enabled else []),
                     *(["forced"] if not forced else []), *(["policies " + ", ".join(missing)] if missing else [])]
            problems.append(f"tenant table {rule.table} (Meta.tenant = {model._meta.tenant!r}) lacks "
                            f"{' and '.join(lacks)}: its rows are not confined to their organization")
    return problems


# -- bootstrap: run by a superuser (or a role with CREATEROLE) once per server and database ---------------


def bootstrap_statements(database: str, passwords: Mapping[str, str] | None = None) -> list[str]:
    """The SQL (run in `database` as an admin) that makes the roles and hands the database to the owner."""
    passwords = passwords or {}
    out = []
    for role, attributes in ATTRIBUTES.items():
        password = passwords.get(role)
        secret = " PASSWORD " + _literal(password) if password else ""
        out.append(f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN "
                   f"CREATE ROLE {role}; END IF; END $$")
        out.append(f"ALTER ROLE {role} {attributes}{secret}")
        # A backend whose client is gone (killed, its network lost) stops within a second instead of
        # running its statement to the end with its locks held.
        out.append(f"ALTER ROLE {role} SET client_connection_check_interval = '{CHECK_CLIENT_MS}ms'")
    quoted = _quote(database)
    out += [
        f"ALTER DATABASE {quoted} OWNER TO {OWNER}",
        f"REVOKE ALL ON DATABASE {quoted} FROM PUBLIC",
        f"GRANT CONNECT, TEMPORARY ON DATABASE {quoted} TO {APP}, {AUTH}, {DOOR}",
        f"GRANT {APP} TO {DOOR}",  # the door's privileges are the application's, table by table
        "CREATE EXTENSION IF NOT EXISTS vector",  # pgvector is not a trusted extension: the admin installs it
        f"ALTER SCHEMA public OWNER TO {OWNER}",
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
        f"GRANT USAGE ON SCHEMA public TO {APP}, {AUTH}",
        ADOPT,
        LEAKPROOF,
        READ_ALL_STATS,
    ]
    return out


# The owner's commands name the session that blocks a schema change (`kit.ddl`): pid, application, role,
# how long its transaction has been open. PostgreSQL shows those of another role's sessions only to a
# member of pg_read_all_stats (read-only statistics, no data). Granted when the admin may grant it.
READ_ALL_STATS = f"""
DO $$ BEGIN
    IF pg_has_role(current_user, 'pg_read_all_stats', 'MEMBER WITH ADMIN OPTION') THEN
        GRANT pg_read_all_stats TO {OWNER};
    END IF;
END $$
"""


# Full-text matching (`tsvector @@ tsquery`) is not marked LEAKPROOF in PostgreSQL's catalog, so under
# row-level security the planner may not use it as an index condition and the GIN index of hybrid
# search goes unused (a tenant's every row is matched one by one). The bootstrap marks it LEAKPROOF in
# the kit's database (only a superuser may; an admin that is not one leaves it, and `kit db check` says).
#
# The threat model under which that is safe, argued here and pinned by tests/test_isolation.py:
# - LEAKPROOF lets the planner run `@@` on rows the policies will drop, so an error that depends on a
#   row's data would tell the caller something about another tenant's row. `@@` has one: a tsquery
#   nested thousands deep exhausts the stack ("stack depth limit exceeded") only when evaluation goes
#   deep, which it does only when the row holds the words (AND stops at the first miss).
# - Through the kit, no such tsquery is built: `DocumentChunk.hybrid_search` takes a search box's text
#   (at most `MAX_QUERY_WORDS` words), and `websearch_to_tsquery` makes of it a query of at most a few
#   nodes per word, thousands of times too shallow to reach the limit, whatever the rows hold.
# - With SQL of its own, the application's role can build that tsquery, but it can also set the
#   tenant setting to any organization for its own transaction (row-level security keeps a tenant from
#   code that forgets a filter, not from code that writes SQL: docs/tenancy.md, "Not kept"), and read
#   that organization's rows outright. The error tells it nothing it cannot read.
# If the tenant ever becomes something the application's role cannot forge, this marking must go.
LEAKPROOF = """
DO $$ BEGIN
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        ALTER FUNCTION pg_catalog.ts_match_vq(tsvector, tsquery) LEAKPROOF;
    END IF;
END $$
"""
LEAKPROOF_SQL = "SELECT proleakproof FROM pg_proc WHERE oid = 'pg_catalog.ts_match_vq(tsvector, tsquery)'::regprocedure"
# Whether this database was bootstrapped by this version of the rules (the embedded server checks it at start).
BOOTSTRAPPED_SQL = f"""
SELECT ({LEAKPROOF_SQL}) AND pg_has_role('{OWNER}', 'pg_read_all_stats', 'MEMBER') AND EXISTS (
    SELECT 1 FROM pg_auth_members m WHERE m.roleid = (SELECT oid FROM pg_roles WHERE rolname = '{APP}')
      AND m.member = (SELECT oid FROM pg_roles WHERE rolname = '{DOOR}')) AND EXISTS (
    SELECT 1 FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole
    WHERE r.rolname = '{APP}' AND s.setdatabase = 0
      AND 'client_connection_check_interval={CHECK_CLIENT_MS}ms' = ANY (s.setconfig))
"""


# Objects made in `public` by another role before the kit had roles (a database migrated as the
# superuser) pass to the owner; an extension's own objects stay with it.
ADOPT = f"""
DO $$
DECLARE found record;
BEGIN
    FOR found IN
        SELECT c.oid::regclass AS name FROM pg_class c
        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
          AND c.relowner <> '{OWNER}'::regrole AND NOT c.relispartition
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                          AND d.objid = c.oid AND d.deptype = 'e')
    LOOP
        EXECUTE format('ALTER TABLE %s OWNER TO {OWNER}', found.name);
    END LOOP;
    FOR found IN
        SELECT p.oid::regprocedure AS name FROM pg_proc p
        WHERE p.pronamespace = 'public'::regnamespace AND p.proowner <> '{OWNER}'::regrole
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                          AND d.objid = p.oid AND d.deptype = 'e')
    LOOP
        EXECUTE format('ALTER FUNCTION %s OWNER TO {OWNER}', found.name);
    END LOOP;
END $$
"""


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def bootstrap(admin_url: str, passwords: Mapping[str, str] | None = None) -> None:
    """Make the kit's roles and give the database `admin_url` names to the owner (idempotent)."""
    import psycopg2
    from psycopg2 import errors

    from kit.config import mask_password
    from kit.errors import DatabaseUnavailable, describe

    try:
        conn = psycopg2.connect(admin_url, application_name="kit-roles", connect_timeout=10)
    except psycopg2.Error as exc:
        raise DatabaseUnavailable(f"could not connect to the database at {mask_password(admin_url)} "
                                  f"(DATABASE_ADMIN_URL) to make the kit's roles: {describe(exc)}; nothing was "
                                  "changed") from None
    try:
        for attempt in (1, 2):  # two processes bootstrapping at once: the loser's CREATE ROLE fails once
            try:
                with conn, conn.cursor() as cursor:  # one transaction: all of it or nothing
                    cursor.execute("SELECT current_database()")
                    for statement in bootstrap_statements(cursor.fetchone()[0], passwords):
                        cursor.execute(statement)
                return
            except (errors.UniqueViolation, errors.DuplicateObject):
                if attempt == 2:
                    raise
    finally:
        conn.close()
