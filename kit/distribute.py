"""Placing the schema on Citus (`kit db distribute`): a planner that returns data, an executor that acts.

Where each table goes comes from its model (`placement`): a tenant table (`Meta.tenant`) is
distributed by `organization_id`, co-located with every other; `Meta.citus = "reference"` copies a
table to every node (small, read by every tenant: plans, users, organizations); every other table
stays on the coordinator ("local"). docs/scaling.md shows the result and argues it.

What Citus refuses is read from the catalog, not assumed (`read_catalog`, then `plan`): a distributed
table needs `organization_id` NOT NULL and in every primary and unique key, and a foreign key to
another distributed table through it; a reference table may point only at reference tables; a
coordinator table may not be pointed at by a distributed one nor point into one. A table that
breaks a rule is a blocker (one sentence), and so is a table whose foreign keys tie it to a blocked
one; everything else is a step. The plan is the same on one server (nothing is distributed there:
the steps say what Citus would do) and on a coordinator.

`distribute` runs the steps on the owner's connection in one transaction under the lock timeout
(`_place`: all placed, or nothing): the tenant policies rewritten in the form Citus takes
(`kit.roles`, no sub-select), the foreign keys of the tables to distribute set aside, then
`create_reference_table` and `create_distributed_table`, then the keys put back. Tables Citus
already places are left as they are, so running it again does nothing new. Citus copies each
table's rows to the workers as it places it, holding writes back meanwhile: on a live database, run
it when the copy of the tables may hold their writes that long.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from kit.db.contract import CITUS_SQL
from kit.ddl import run_ddl
from kit.errors import KitError, NotCitus, PlacementRefused, describe
from kit.roles import policy_statements, tenant_rule

TENANT_COLUMN = "organization_id"
Role = Literal["distributed", "reference", "local"]


@dataclass(frozen=True)
class Key:
    """A primary key ("p"), unique key or index ("u"), or foreign key ("f") as the catalog has it."""

    table: str
    kind: str
    columns: tuple[str, ...]
    target: str | None = None  # a foreign key's table
    target_columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class Catalog:
    """What the planner reads: each table's columns (name: nullable), its keys, what Citus already places, the
    tables with a policy that looks rows up with a sub-select (which Citus refuses in its tables), and the
    partitioned tables with CHECK constraints (which Citus 13 cannot take in as coordinator tables)."""

    columns: dict[str, dict[str, bool]]
    keys: tuple[Key, ...]
    placed: dict[str, Role] = field(default_factory=dict)
    subselect_policies: frozenset[str] = frozenset()
    partitioned_with_checks: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Step:
    """One table to place: `create_reference_table`, or `create_distributed_table` co-located with `colocate_with`."""

    table: str
    role: Role
    colocate_with: str | None = None


@dataclass(frozen=True)
class Plan:
    """The steps in order (what a table points at first), the tables already placed, each blocked table's reasons."""

    steps: tuple[Step, ...]
    done: tuple[str, ...]
    blockers: dict[str, list[str]]


def placement(models: Iterable[Any]) -> dict[str, Role]:
    """Each model's table and where it goes on Citus (`Meta.citus`, else distributed for a tenant table, else local)."""
    out: dict[str, Role] = {}
    for model in models:
        meta = model._meta
        given = getattr(meta, "citus", None)
        out[meta.table_name] = given or ("distributed" if getattr(meta, "tenant", None) else "local")
    return out


def plan(places: dict[str, Role], catalog: Catalog, rewritten: frozenset[str] = frozenset()) -> Plan:
    """The steps that place `places` on Citus given `catalog`, and why each table that cannot be placed is not.

    `rewritten`: the tables whose policies `distribute` writes again without a sub-select first.
    """
    blockers = _blockers(places, catalog, catalog.subselect_policies - rewritten)
    done = tuple(sorted(t for t in places if catalog.placed.get(t) == places[t] and places[t] != "local"))
    todo = _referenced_first([t for t in places if places[t] != "local" and t not in blockers and t not in done],
                             catalog)
    first = next((t for t in done if places[t] == "distributed"), None)
    distributed = []
    for table in (t for t in todo if places[t] == "distributed"):
        distributed.append(Step(table, "distributed", first))
        first = first or table  # the first one made is the one every other is co-located with
    references = [Step(t, "reference") for t in todo if places[t] == "reference"]
    return Plan(tuple(references + distributed), done, blockers)


def _blockers(places: dict[str, Role], catalog: Catalog, looking_up: frozenset[str]) -> dict[str, list[str]]:
    """Each table that cannot be placed, with its reasons: its own, then those of the tables it is tied to."""
    blockers = {table: reasons for table in places if (reasons := _own_blockers(table, places, catalog))}
    for table in (t for t in places if places[t] != "local"):  # Citus takes the tables tied to one it places in too
        if table in looking_up:
            blockers.setdefault(table, []).append(
                f"{table}: its row-level security looks rows up with a sub-select, which Citus refuses in its tables")
        found = sorted(_tied_graph(table, catalog) & looking_up - {table})
        if found:
            blockers.setdefault(table, []).append(
                f"{table}: placing it brings {', '.join(found)} into Citus's metadata (tied to it by foreign keys), "
                "whose row-level security looks rows up with a sub-select, which Citus refuses")
    while True:  # a table tied by a foreign key to a blocked one cannot go either: Citus would refuse the key
        tied = {table: [reason] for table in places if table not in blockers
                and (reason := _tied_blocker(table, places, catalog, blockers)
                     or _taken_in_blocker(table, places, catalog, blockers))}
        if not tied:
            return blockers
        blockers.update(tied)


def _taken_in_blocker(table: str, places: dict[str, Role], catalog: Catalog,
                      blockers: dict[str, list[str]]) -> str | None:
    """Why placing `table` would fail on a partitioned table Citus takes in with it as a coordinator table (None: none).

    Citus 13 cannot take a partitioned table with CHECK constraints into its metadata as a table on the
    coordinator: it names the partitions' constraints after shards that do not match ("child table is
    missing constraint"). Distributed, such a table is fine; so it blocks only while it stays behind.
    """
    if places[table] == "local":
        return None
    behind = {t for t in _tied_graph(table, catalog) if places.get(t, "local") == "local" or t in blockers}
    found = sorted(behind & catalog.partitioned_with_checks)
    if not found:
        return None
    return (f"{table}: placing it brings {', '.join(found)} into Citus's metadata as a coordinator table, and Citus "
            "cannot take a partitioned table with CHECK constraints in so ('child table is missing constraint')")


def _own_blockers(table: str, places: dict[str, Role], catalog: Catalog) -> list[str]:
    """Why Citus would refuse to place `table` as `places` says, from its own columns and keys ([]: it would not)."""
    role = places[table]
    if role == "local":
        return []  # it stays where it is: its keys into a distributed table are the distributed table's blocker
    columns = catalog.columns.get(table)
    if columns is None:
        return [f"{table}: not in the database (migrate first)"]
    keys = [k for k in catalog.keys if k.table == table]
    found = _distribution_blockers(table, columns, keys) if role == "distributed" else []
    found += [reason for key in keys if key.kind == "f" and key.target not in (None, table)
              and (reason := _edge_blocker(table, role, key, places.get(key.target or "", "local")))]
    if role == "distributed":  # keys pointing at it from tables that stay elsewhere
        found += [f"{table}: {key.table} ({', '.join(key.columns)}) points at it and is {_said(places[key.table])}, "
                  "which Citus cannot keep pointing into a distributed table"
                  for key in catalog.keys if key.kind == "f" and key.target == table and key.table != table
                  and key.table in places and places[key.table] != "distributed"]
    return found


def _distribution_blockers(table: str, columns: dict[str, bool], keys: list[Key]) -> list[str]:
    """Why Citus would refuse to distribute `table` by TENANT_COLUMN: the column itself, and its keys."""
    found = []
    if TENANT_COLUMN not in columns:
        found.append(f"{table}: has no {TENANT_COLUMN}, the column Citus would place its rows by")
    elif columns[TENANT_COLUMN]:
        found.append(f"{table}: {TENANT_COLUMN} may be NULL, and Citus places every row by it")
    return found + [f"{table}: its {'primary' if key.kind == 'p' else 'unique'} key ({', '.join(key.columns)}) lacks "
                    f"{TENANT_COLUMN}, and Citus keeps a key unique only within one organization's shard"
                    for key in keys if key.kind in "pu" and TENANT_COLUMN not in key.columns]


def _edge_blocker(table: str, role: Role, key: Key, target: Role) -> str | None:
    """Why Citus would refuse `table`'s foreign key `key` to a table placed as `target` (None: it would keep it)."""
    edge = f"foreign key ({', '.join(key.columns)}) -> {key.target}"
    if role == "reference" and target != "reference":
        return f"{table}: its {edge} points at a table that is {_said(target)}, and a reference table may point only " \
               "at reference tables"
    if role == "distributed" and target == "local":
        return f"{table}: its {edge} points at a table that stays on the coordinator"
    if role == "distributed" and target == "distributed" and (
            TENANT_COLUMN not in key.columns or TENANT_COLUMN not in key.target_columns):
        return f"{table}: its {edge} lacks {TENANT_COLUMN} on both sides, so Citus cannot keep it within a shard"
    return None


def _tied_blocker(table: str, places: dict[str, Role], catalog: Catalog, blockers: dict[str, list[str]]) -> str | None:
    """Why `table` cannot be placed because a table its foreign keys tie it to is blocked (None: none is)."""
    if places[table] == "local":
        return None
    for key in catalog.keys:
        if key.kind != "f" or key.table == key.target:
            continue
        if key.table == table and key.target in blockers:
            return f"{table}: points at {key.target}, which cannot be placed yet"
        if key.target == table and key.table in blockers and places.get(key.table) == "distributed" \
                and places[table] == "distributed":
            return f"{table}: {key.table} points at it and cannot be placed yet"
    return None


def _tied_graph(table: str, catalog: Catalog) -> set[str]:
    """`table` and every table tied to it by foreign keys, either way, near or far."""
    seen, todo = {table}, [table]
    while todo:
        at = todo.pop()
        for key in catalog.keys:
            if key.kind == "f" and key.target is not None and at in (key.table, key.target):
                other = key.target if key.table == at else key.table
                if other not in seen:
                    seen.add(other)
                    todo.append(other)
    return seen


def _referenced_first(tables: list[str], catalog: Catalog) -> list[str]:
    """`tables` ordered so that a table comes after the tables its foreign keys point at (stable otherwise)."""
    wanted, ordered, seen = set(tables), [], set()

    def visit(table: str, path: frozenset[str]) -> None:
        if table in seen or table in path:
            return
        for key in catalog.keys:
            if key.kind == "f" and key.table == table and key.target in wanted and key.target != table:
                visit(key.target, path | {table})
        seen.add(table)
        ordered.append(table)

    for table in sorted(tables):
        visit(table, frozenset())
    return ordered


def _said(role: Role) -> str:
    return {"distributed": "distributed", "reference": "a reference table", "local": "on the coordinator"}[role]


# -- reading the catalog, and acting -------------------------------------------------------------

COLUMNS_SQL = """
SELECT c.relname, a.attname, NOT a.attnotnull
FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND a.attnum > 0 AND NOT a.attisdropped
"""
KEYS_SQL = """
SELECT c.relname, k.contype::text,
       ARRAY(SELECT attname FROM unnest(k.conkey) n JOIN pg_attribute ON attrelid = k.conrelid AND attnum = n),
       t.relname,
       ARRAY(SELECT attname FROM unnest(k.confkey) n JOIN pg_attribute ON attrelid = k.confrelid AND attnum = n)
FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid LEFT JOIN pg_class t ON t.oid = k.confrelid
WHERE k.contype IN ('p', 'u', 'f') AND c.relnamespace = 'public'::regnamespace AND NOT c.relispartition
  AND k.conparentid = 0
UNION ALL
SELECT c.relname, 'u', ARRAY(SELECT attname FROM unnest(x.indkey) n JOIN pg_attribute ON attrelid = x.indrelid
                            AND attnum = n), NULL, ARRAY[]::name[]
FROM pg_index x JOIN pg_class c ON c.oid = x.indrelid
WHERE x.indisunique AND c.relnamespace = 'public'::regnamespace AND NOT c.relispartition
  AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = x.indexrelid)
"""
PLACED_SQL = """
SELECT c.relname, CASE WHEN p.partmethod = 'h' THEN 'distributed' WHEN p.repmodel = 't' THEN 'reference'
                       ELSE 'local' END  -- a Citus local table: on the coordinator, in Citus's metadata
FROM pg_dist_partition p JOIN pg_class c ON c.oid = p.logicalrelid
WHERE c.relnamespace = 'public'::regnamespace
"""
SUBSELECT_POLICIES_SQL = """
SELECT DISTINCT c.relname FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
WHERE c.relnamespace = 'public'::regnamespace  -- a sub-select in the policy's parsed expression: a SubLink node
  AND strpos(coalesce(p.polqual::text, '') || coalesce(p.polwithcheck::text, ''), '{SUBLINK') > 0
"""
PARTITIONED_WITH_CHECKS_SQL = """
SELECT DISTINCT c.relname FROM pg_class c JOIN pg_constraint k ON k.conrelid = c.oid AND k.contype = 'c'
WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'p'
"""


def read_catalog(rows: Callable[[str], list[tuple]], citus: bool) -> Catalog:
    """The planner's view of a database (`rows(sql)` runs a query); `citus`: also read what Citus places."""
    columns: dict[str, dict[str, bool]] = {}
    for table, column, nullable in rows(COLUMNS_SQL):
        columns.setdefault(table, {})[column] = bool(nullable)
    keys = tuple(Key(t, kind, tuple(cols), target, tuple(target_cols or ()))
                 for t, kind, cols, target, target_cols in rows(KEYS_SQL))
    placed: dict[str, Role] = dict(rows(PLACED_SQL)) if citus else {}
    return Catalog(columns, keys, placed, frozenset(t for t, in rows(SUBSELECT_POLICIES_SQL)),
                   frozenset(t for t, in rows(PARTITIONED_WITH_CHECKS_SQL)))


def distribute(database: Any, models: Iterable[Any], *, say: Callable[[str], None] = print,
               dry_run: bool = False) -> Plan:
    """Place `models`' tables on the Citus coordinator behind `database` (the owner's) as `plan` says; the plan.

    Refused with NotCitus, nothing done, when the server has no Citus (unless `dry_run`: the plan is
    then what Citus would be asked to do).
    """
    models = list(models)
    rules = {m._meta.table_name: tenant_rule(m) for m in models}

    def rows(sql: str) -> list[tuple]:
        return list(database.execute_sql(sql).fetchall())

    citus = bool(rows(CITUS_SQL)[0][0])
    if not citus and not dry_run:
        raise NotCitus("the database has no Citus (the citus extension is not installed), so there is nothing to "
                       "distribute; point DATABASE_OWNER_URL at a Citus coordinator; nothing was done")
    catalog = read_catalog(rows, citus)
    planned = plan_models(models, catalog)
    for table in planned.done:
        say(f"{table}: already placed")
    if planned.steps and not dry_run:
        tied = set().union(*(_tied_graph(step.table, catalog) for step in planned.steps))
        rewrite = [rules[t] for t in sorted(rewritable(models) & catalog.subselect_policies & tied)]
        _place(database, planned.steps, rewrite)
    for step in planned.steps:
        how = ("a reference table" if step.role == "reference" else
               f"distributed by {TENANT_COLUMN}" + (f", co-located with {step.colocate_with}" if step.colocate_with
                                                    else ""))
        say(f"{step.table}: {'would be' if dry_run else 'is'} {how}")
    for reasons in planned.blockers.values():
        for reason in reasons:
            say(f"not placed: {reason}")
    return planned


def rewritable(models: Iterable[Any]) -> frozenset[str]:
    """The tables whose tenant policies `distribute` can write without a sub-select (their own column's)."""
    return frozenset(m._meta.table_name for m in models if (rule := tenant_rule(m)) is not None and rule.parent is None)


def plan_models(models: Iterable[Any], catalog: Catalog) -> Plan:
    """The plan `distribute` follows for `models` on a database whose catalog is `catalog`."""
    models = list(models)
    return plan(placement(models), catalog, rewritable(models))


FOREIGN_KEYS_OF_SQL = """
SELECT c.relname, k.conname, pg_get_constraintdef(k.oid) FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
WHERE k.contype = 'f' AND c.relnamespace = 'public'::regnamespace AND c.relname = ANY (%s) AND k.conparentid = 0
ORDER BY c.relname, k.conname
"""


def _place(database: Any, steps: tuple[Step, ...], rewrite: list[Any]) -> None:
    """Run the steps in one transaction, its lock waits bounded (`kit.ddl.run_ddl`): all placed, or nothing.

    Citus takes the coordinator tables tied by foreign keys to a table it places into its metadata,
    and a table in its metadata is distributed only once the tables it points at are. So the foreign
    keys of the tables to distribute are set aside first (read from the catalog), the reference tables
    placed (the coordinator tables still tied to them taken in), the tables distributed, and the keys
    put back, validated, on the shards.
    """
    distributed = [step.table for step in steps if step.role == "distributed"]

    def attempt() -> None:
        # Citus places a table with triggers only when told to: they run on the shards, where one that reached
        # other tables could miss rows. The kit's own (kit_touch_updated_at) set a column of the row written.
        database.execute_sql("SET LOCAL citus.enable_unsafe_triggers = on")
        database.execute_sql("SET LOCAL citus.multi_shard_modify_mode = 'sequential'")  # DDL after placing, same xact
        for rule in rewrite:
            for statement in policy_statements(rule, distributed=True):
                database.execute_sql(statement)
        keys = database.execute_sql(FOREIGN_KEYS_OF_SQL, (distributed,)).fetchall()
        for table, name, _ in keys:
            database.execute_sql(f'ALTER TABLE "{table}" DROP CONSTRAINT "{name}"')
        for step in steps:
            if step.role == "reference":
                database.execute_sql("SELECT create_reference_table(%s)", (step.table,))
            else:
                database.execute_sql("SELECT create_distributed_table(%s, %s, colocate_with => %s)",
                                     (step.table, TENANT_COLUMN, step.colocate_with or "default"))
        for table, name, definition in keys:
            database.execute_sql(f'ALTER TABLE "{table}" ADD CONSTRAINT "{name}" {definition}')

    try:
        run_ddl(database, "placing the tables on Citus", attempt)
    except KitError:
        raise
    except Exception as exc:  # Citus's own refusal, in one sentence: the transaction rolled back
        raise PlacementRefused(f"Citus refused to place the tables ({describe(exc)}); nothing changed") from exc
