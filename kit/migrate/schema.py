"""Compares the live schema with the models: tables, columns, types, nullability, defaults, foreign keys,
indexes (columns, uniqueness, access method, operator class, parameters), tables' storage parameters,
and the trigger that keeps `updated_at` on every table that has the column.

playhouse's schema_diff compares names only; this reads PostgreSQL's catalogs. Each difference is one
sentence naming the table and column or index, what the database has and what the models say.
CHECK constraints are compared as PostgreSQL prints them: the models' are added to a scratch copy of
the table (rolled back) and read back, since the server rewrites their text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import peewee
from peewee import Database, DatabaseError, ForeignKeyField, Model

from kit.errors import describe
from kit.migrate.history import CHECKSUM_TABLE, HISTORY_TABLE, STEPS_TABLE
from kit.migrate.operations import TOUCH_FUNCTION
from kit.vector import VectorIndex
from kit.vector.tenants import TENANT_INDEX

IGNORED_TABLES = {HISTORY_TABLE, CHECKSUM_TABLE, STEPS_TABLE}
ON_DELETE = {None: "a", "NO ACTION": "a", "RESTRICT": "r", "CASCADE": "c", "SET NULL": "n", "SET DEFAULT": "d"}
ON_DELETE_NAMES = {"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}
TYPE_NAMES = {
    "uuid": "uuid",
    "timestamptz": "timestamp with time zone",
    "timestamp": "timestamp without time zone",
    "datetime": "timestamp without time zone",
    "text": "text",
    "int": "integer",
    "integer": "integer",
    "serial": "integer",
    "bigint": "bigint",
    "bigserial": "bigint",
    "smallint": "smallint",
    "bool": "boolean",
    "boolean": "boolean",
    "jsonb": "jsonb",
    "json": "json",
    "date": "date",
    "real": "real",
    "float": "real",
    "double precision": "double precision",
    "bytea": "bytea",
    "varchar": "character varying",
    "decimal": "numeric",
    "numeric": "numeric",
}

COLUMNS_SQL = """
SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       CASE WHEN a.attgenerated = '' THEN pg_get_expr(d.adbin, d.adrelid) END  -- a default, not a generation
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND a.attnum > 0 AND NOT a.attisdropped
"""
# A foreign key through the organization, (organization_id, x) -> (organization_id, y), as a tenant table
# references another so that Citus can keep it within a shard, is the model's x -> y: its last column pair.
FOREIGN_KEYS_SQL = """
SELECT t.relname, a.attname, r.relname, ra.attname, con.confdeltype
FROM pg_constraint con
JOIN pg_class t ON t.oid = con.conrelid
JOIN pg_class r ON r.oid = con.confrelid
CROSS JOIN LATERAL (SELECT CASE WHEN cardinality(con.conkey) = 2
                             AND (SELECT attname FROM pg_attribute WHERE attrelid = con.conrelid
                                  AND attnum = con.conkey[1]) = 'organization_id'
                             AND (SELECT attname FROM pg_attribute WHERE attrelid = con.confrelid
                                  AND attnum = con.confkey[1]) = 'organization_id'
                           THEN 2 ELSE 1 END AS at) k
JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = con.conkey[k.at]
JOIN pg_attribute ra ON ra.attrelid = con.confrelid AND ra.attnum = con.confkey[k.at]
WHERE con.contype = 'f' AND t.relnamespace = current_schema()::regnamespace
"""
CHECKS_SQL = """
SELECT pg_get_constraintdef(con.oid)
FROM pg_constraint con
WHERE con.contype = 'c' AND con.conrelid = %s::regclass
"""
TOUCH_TRIGGERS_SQL = """
SELECT c.relname
FROM pg_trigger t
JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_proc p ON p.oid = t.tgfoid
WHERE c.relnamespace = current_schema()::regnamespace AND p.proname = %s AND t.tgenabled <> 'D'
"""
TABLE_OPTIONS_SQL = """
SELECT c.relname, COALESCE(c.reloptions, '{}')
FROM pg_class c
WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p') AND NOT c.relispartition
"""
INDEXES_SQL = """
SELECT t.relname, i.relname, ix.indisunique, ix.indisprimary, am.amname,
       ARRAY(SELECT a.attname FROM unnest(ix.indkey) WITH ORDINALITY k(num, ord)
             JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.num ORDER BY k.ord),
       ARRAY(SELECT o.opcname FROM unnest(ix.indclass) WITH ORDINALITY k(oid, ord)
             JOIN pg_opclass o ON o.oid = k.oid ORDER BY k.ord),
       COALESCE(i.reloptions, '{}'), ix.indnullsnotdistinct
FROM pg_index ix
JOIN pg_class i ON i.oid = ix.indexrelid
JOIN pg_class t ON t.oid = ix.indrelid
JOIN pg_am am ON am.oid = i.relam
WHERE t.relnamespace = current_schema()::regnamespace
"""


def normalize_type(sql_type: str) -> str:
    """A column type as PostgreSQL's format_type() writes it: `NUMERIC(12, 6)` -> `numeric(12,6)`."""
    text = re.sub(r"\s*,\s*", ",", sql_type.strip().lower())
    match = re.fullmatch(r"([a-z ]+?)\s*(\(.*\))?", text)
    if not match:
        return text
    base, modifiers = match.group(1), match.group(2) or ""
    return TYPE_NAMES.get(base, base) + modifiers


def _normalize_default(expression: str | None) -> str | None:
    """A default expression as comparable text: `'member'::text` and `'member'` are the same default."""
    if expression is None:
        return None
    text = re.sub(r"\s+", " ", expression.strip())
    return re.sub(r"^('(?:[^']|'')*')::(?:text|character varying)$", r"\1", text)


def _model_default(field: Any) -> str | None:
    for constraint in getattr(field, "constraints", None) or []:
        sql = getattr(constraint, "sql", "")
        if sql.upper().startswith("DEFAULT "):
            return _normalize_default(sql[len("DEFAULT "):])
    return None


def _field_type(database: Database, field: Any) -> str:
    ctx = database.get_sql_context()
    target = field.rel_field if isinstance(field, ForeignKeyField) else field
    return normalize_type(ctx.sql(target.ddl_datatype(ctx)).query()[0])


def _expected_index(index: Any) -> dict[str, Any]:
    columns = [e.column_name for e in index._expressions if hasattr(e, "column_name")]
    expected: dict[str, Any] = {"columns": columns, "unique": bool(index._unique),
                                "method": (index._using or "btree").lower()}
    if isinstance(index, VectorIndex):
        expected["opclass"] = index.opclass
        expected["options"] = sorted(f"{k}={v}" for k, v in index.parameters.items())
    if index._nulls_distinct is not None:
        expected["nulls_not_distinct"] = not index._nulls_distinct
    return expected


def compare(database: Database, models: Iterable[type[Model]], report_extra: bool = True) -> list[str]:
    """Differences between the live schema and `models`, one sentence each (empty: they match).

    With `report_extra=False`, only what the models expect and the database lacks or has otherwise.
    """
    models = list(models)
    columns: dict[str, dict[str, tuple]] = {}
    for table, column, sql_type, not_null, default in database.execute_sql(COLUMNS_SQL).fetchall():
        columns.setdefault(table, {})[column] = (sql_type, not_null, _normalize_default(default))
    foreign_keys = {(t, c): (rt, rc, d) for t, c, rt, rc, d in database.execute_sql(FOREIGN_KEYS_SQL).fetchall()}
    indexes: dict[str, dict[str, tuple]] = {}
    for table, name, unique, primary, method, cols, opclasses, options, nnd in database.execute_sql(
        INDEXES_SQL
    ).fetchall():
        if not primary:
            indexes.setdefault(table, {})[name] = (unique, method, list(cols), list(opclasses), sorted(options), nnd)

    options = dict(database.execute_sql(TABLE_OPTIONS_SQL).fetchall())
    touched = {r[0] for r in database.execute_sql(TOUCH_TRIGGERS_SQL, (TOUCH_FUNCTION,)).fetchall()}

    problems: list[str] = []
    known_tables = {m._meta.table_name for m in models}
    for table in sorted(set(columns) - known_tables - IGNORED_TABLES) if report_extra else ():
        problems.append(f"table {table} exists in the database but not in the models")
    for model in models:
        table = model._meta.table_name
        if table not in columns:
            problems.append(f"table {table} is missing from the database")
            continue
        found = _compare_columns(database, model, columns[table], foreign_keys)
        found += _compare_indexes(model, indexes.get(table, {}))
        found += _compare_options(model, options.get(table, []))
        found += _compare_checks(database, model)
        if "updated_at" in columns[table] and "updated_at" in model._meta.columns and table not in touched:
            found.append(f"{table}.updated_at is not kept by the database (no {TOUCH_FUNCTION} trigger): "
                         f"add kit_ops.keep_updated_at(migrator, {table!r}) in a migration")
        problems.extend(p for p in found if report_extra or "but not in the model" not in p)
    return problems


def _compare_columns(database: Database, model: type[Model], live: dict[str, tuple],
                     foreign_keys: dict[tuple[str, str], tuple]) -> list[str]:
    table = model._meta.table_name
    problems = []
    expected_columns = {f.column_name: f for f in model._meta.sorted_fields}
    for column in sorted(set(live) - set(expected_columns)):
        problems.append(f"{table}.{column} exists in the database but not in the model")
    for column, field in expected_columns.items():
        if column not in live:
            problems.append(f"{table}.{column} is missing from the database")
            continue
        sql_type, not_null, default = live[column]
        want_type = _field_type(database, field)
        if sql_type != want_type:
            problems.append(f"{table}.{column} is {sql_type} in the database, the model says {want_type}")
        want_not_null = not field.null or field.primary_key
        if bool(not_null) != want_not_null:
            problems.append(
                f"{table}.{column} is {'NOT NULL' if not_null else 'nullable'} in the database, "
                f"the model says {'NOT NULL' if want_not_null else 'nullable'}"
            )
        want_default = _model_default(field)
        if default != want_default and not (want_default is None and default and default.startswith("nextval(")):
            problems.append(f"{table}.{column} has default {default or 'none'} in the database, "
                            f"the model says {want_default or 'none'}")
        fk = foreign_keys.get((table, column))
        if isinstance(field, ForeignKeyField):
            want = (field.rel_model._meta.table_name, field.rel_field.column_name, ON_DELETE[field.on_delete])
            if fk is None:
                problems.append(f"{table}.{column} has no foreign key in the database; the model references {want[0]}")
            elif fk != want:
                problems.append(
                    f"{table}.{column} references {fk[0]}.{fk[1]} ON DELETE {ON_DELETE_NAMES[fk[2]]} in the database, "
                    f"the model says {want[0]}.{want[1]} ON DELETE {ON_DELETE_NAMES[want[2]]}"
                )
        elif fk is not None:
            problems.append(f"{table}.{column} has a foreign key to {fk[0]} in the database but not in the model")
    return problems


_WITH = re.compile(r"^\s*WITH\s*\((.*)\)\s*$", re.I | re.S)


def _table_options(model: type[Model]) -> list[str]:
    """The storage parameters a model's `table_settings` give, as `name=value` (PostgreSQL's spelling)."""
    settings = model._meta.table_settings or []
    options = []
    for setting in [settings] if isinstance(settings, str) else settings:
        match = _WITH.match(setting)
        if match:
            options += [re.sub(r"\s*=\s*", "=", o.strip()).lower() for o in match.group(1).split(",") if o.strip()]
    return sorted(options)


def _compare_options(model: type[Model], live: list[str]) -> list[str]:
    want, have = _table_options(model), sorted(o.lower() for o in live)
    if want == have:
        return []
    return [f"{model._meta.table_name} has storage parameters ({', '.join(have) or 'none'}) in the database, "
            f"the model says ({', '.join(want) or 'none'})"]


RENDERER = peewee.PostgresqlDatabase(None)  # renders SQL for PostgreSQL without a connection


def constraint_sql(constraint: Any) -> str | None:
    """A constraint as SQL text (`CHECK (...)`, `CONSTRAINT "name" CHECK (...)`); None if it has parameters."""
    sql = getattr(constraint, "sql", None)
    if isinstance(sql, str):
        return sql
    try:
        text, params = RENDERER.get_sql_context().sql(constraint).query()
    except Exception:  # noqa: BLE001 - a node peewee cannot render on its own
        return None
    return None if params else text


def _model_checks(model: type[Model]) -> list[str]:
    """The CHECK expressions a model declares, named or not, on its columns and in Meta.constraints."""
    declared = [c for f in model._meta.sorted_fields for c in f.constraints or []]
    declared += list(model._meta.constraints or [])
    checks = []
    for constraint in declared:
        text = constraint_sql(constraint) or ""
        match = re.match(r'^\s*(?:CONSTRAINT\s+(?:"[^"]+"|\S+)\s+)?CHECK\s*\((.*)\)\s*$', text, re.I | re.S)
        if match:
            checks.append(match.group(1))
    return checks


def _compare_checks(database: Database, model: type[Model]) -> list[str]:
    table = model._meta.table_name
    problems = []
    with database.atomic() as probe:  # the server spells the models' checks; then it is all rolled back
        live = sorted(r[0] for r in database.execute_sql(CHECKS_SQL, (f'"{table}"',)).fetchall())
        scratch = f"kit_check_probe_{table}"
        try:
            with database.atomic():
                database.execute_sql(f'CREATE TEMP TABLE "{scratch}" (LIKE "{table}") ON COMMIT DROP')
        except DatabaseError as exc:  # a read-only server, say: say so rather than guess
            probe.rollback()
            return [f"{table}: CHECK constraints not compared, no scratch table could be made "
                    f"({describe(exc)})"]
        for expression in _model_checks(model):
            try:
                with database.atomic():
                    database.execute_sql(f'ALTER TABLE "{scratch}" ADD CHECK ({expression})'.replace("%", "%%"))
            except DatabaseError as exc:
                problems.append(f"{table}: the model's CHECK ({expression}) is not valid here: "
                                f"{describe(exc)}")
        want = sorted(r[0] for r in database.execute_sql(CHECKS_SQL, (f'"{scratch}"',)).fetchall())
        probe.rollback()
    for check in sorted(set(live) - set(want)):
        problems.append(f"{table} has {check} in the database but not in the model")
    for check in sorted(set(want) - set(live)):
        problems.append(f"{table} lacks {check}, which the model declares")
    return problems


def _compare_indexes(model: type[Model], live: dict[str, tuple]) -> list[str]:
    table = model._meta.table_name
    problems = []
    expected = {index._name: _expected_index(index) for index in model._meta.fields_to_index()}
    for name in sorted(set(live) - set(expected)):
        if TENANT_INDEX.fullmatch(name):  # made and dropped at run time by `kit maintain`
            continue
        problems.append(f"index {name} on {table} exists in the database but not in the models")
    for name, want in expected.items():
        if name not in live:
            how = f"{want['method']} ({', '.join(want['columns'])})"
            problems.append(f"index {name} on {table} is missing from the database (expected {how})")
            continue
        unique, method, cols, opclasses, options, nulls_not_distinct = live[name]
        if cols != want["columns"]:
            problems.append(f"index {name} covers ({', '.join(cols)}), the model says ({', '.join(want['columns'])})")
        if unique != want["unique"]:
            problems.append(f"index {name} is {'' if unique else 'not '}unique in the database, the model says "
                            f"{'unique' if want['unique'] else 'not unique'}")
        if method != want["method"]:
            problems.append(f"index {name} uses {method} in the database, the model says {want['method']}")
        if "opclass" in want and opclasses[:1] != [want["opclass"]]:
            problems.append(f"index {name} uses operator class {opclasses[0] if opclasses else 'none'}, "
                            f"the model says {want['opclass']}")
        if "options" in want and options != want["options"]:
            problems.append(f"index {name} has ({', '.join(options)}), the model says ({', '.join(want['options'])})")
        if want.get("nulls_not_distinct", False) != bool(nulls_not_distinct):
            problems.append(f"index {name} differs in NULLS NOT DISTINCT from the model")
    return problems
