"""YAML seed fixtures: parse, validate, resolve and load them, all or nothing. The syntax is in the README.

    fixture = parse(Path("seeds/fixtures/dev.yaml"))
    report = load(fixture, seed=0)            # {table: Counts(inserted, updated, unchanged)}

Every error names its place as `file:line: table.label.column: what is wrong`.
"""

from __future__ import annotations

import base64
import bisect
import collections
import datetime as dt
import decimal
import fnmatch
import functools
import hashlib
import itertools
import json
import os
import random
import re
import statistics
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import peewee
import psycopg2
import yaml
from peewee import (
    BooleanField,
    DateField,
    DateTimeField,
    DecimalField,
    FloatField,
    ForeignKeyField,
    IntegerField,
    Model,
    TextField,
    UUIDField,
)
from playhouse.postgres_ext import BinaryJSONField, DateTimeTZField

from kit.config import KitError
from kit.vector import CopyRowError, VectorField, VectorIndex, VectorValueError
from kit.vector.bulk import CopyWriter

ID_NAMESPACE = uuid.UUID("5b0c7e52-7e0a-4a53-9d0c-6b1e3f4a2c10")  # ids of labelled rows: uuid5(table:label)
TAGS = ("!fake", "!now", "!env", "!choice", "!pick", "!embedding", "!password", "!format", "!index")
APPEND_ONLY = {"audit_logs"}


class FixtureError(KitError):
    """A fixture cannot be parsed, resolved or loaded; the message starts with `file:line: table.label.column:`."""


@dataclass(frozen=True)
class Where:
    """A place in a fixture file."""

    file: Path
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


def fail(where: Where | None, path: str, message: str) -> FixtureError:
    """An error at `where` about `path` (table.label.column)."""
    prefix = f"{where}: " if where else ""
    return FixtureError(f"{prefix}{path + ': ' if path else ''}{message}")


# -- value specifications ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Fake:
    """`!fake person.email` or `!fake {method: person.email, locale: de, domains: [example.com]}`."""

    method: str
    locale: str | None = None
    kwargs: tuple = ()


@dataclass(frozen=True)
class Now:
    """`!now`, `!now -7d`, `!now +2h30m`: a time relative to the load, set when the row is first inserted."""

    offset: dt.timedelta


@dataclass(frozen=True)
class Env:
    """`!env NAME` or `!env {name: NAME, default: value}`."""

    name: str
    default: Any = None
    has_default: bool = False


@dataclass(frozen=True)
class Choice:
    """`!choice [a, b]` (equal odds) or `!choice {admin: 1, member: 4}` (weighted)."""

    options: tuple
    weights: tuple | None


@dataclass(frozen=True)
class Pick:
    """`!pick users` or `!pick {table: users, unique: true, match: "gen.*"}`: the id of one row of a table.

    `unique` never picks the same row twice for one parent; `match` keeps rows whose label fits a glob.
    """

    table: str
    unique: bool = False
    match: str | None = None


@dataclass(frozen=True)
class Embedding:
    """`!embedding` (random unit vector) or `!embedding {file: vectors.npy, row: 3}`."""

    file: Path | None = None
    row: int | None = None


@dataclass(frozen=True)
class Password:
    """`!password secret`: stored as a Better Auth compatible scrypt hash, never in clear."""

    plain: str


@dataclass(frozen=True)
class Format:
    """`!format "user{n}@example.com"`: {n} the generated row's index, {label}, {parent} the parent's label."""

    template: str


@dataclass(frozen=True)
class Index:
    """`!index`: a generated row's number among its parent's rows (or among all, for `count:`), from 0."""


@dataclass(frozen=True)
class Ref:
    """`"@users.alice"` (the row's id), `"@users.alice.email"` (a column), `"@parent.organization"`."""

    table: str
    label: str | None
    column: str | None


@dataclass(frozen=True)
class Find:
    """`{$find: {slug: pro}}`: the id of the one row with these values, in this load or in the database."""

    criteria: tuple


@dataclass
class Cell:
    """One column's value specification and where it was written."""

    spec: Any
    where: Where


@dataclass(slots=True)
class RowSpec:
    """A row to load: labelled in a file, or generated (then `group` holds its siblings' generator)."""

    table: str
    label: str
    cells: dict[str, Cell]
    where: Where
    index: int | None = None
    parent: tuple[str, str] | None = None
    position: int | None = None
    group: Group | None = None


@dataclass
class Generator:
    """`_generate`: a number of rows, or a number per row of a parent table."""

    table: str
    name: str
    cells: dict[str, Cell]
    where: Where
    count: int | None = None
    per: str | None = None
    parent_column: str | None = None
    between: tuple[int, int] = (1, 1)


@dataclass(eq=False)
class Group:
    """The rows one generator makes for one parent row (or in all, for `count:`), at positions 0..size-1."""

    generator: Generator
    parent: str | None
    size: int


@dataclass
class Fixture:
    """What one or more fixture files ask for."""

    rows: list[RowSpec] = field(default_factory=list)
    generators: list[Generator] = field(default_factory=list)
    keys: dict[str, list[str]] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


# -- parse ------------------------------------------------------------------------------------------


def models_by_name() -> dict[str, type[Model]]:
    """The kit's models by table name and by class name."""
    from kit.models import ALL_MODELS

    names: dict[str, type[Model]] = {}
    for model in ALL_MODELS:
        names[model._meta.table_name] = model
        names[model.__name__] = model
    return names


def parse(*paths: Path) -> Fixture:
    """Read fixture files (and what they include) into one Fixture."""
    fixture = Fixture()
    for path in paths:
        _parse_file(Path(path), fixture, stack=())
    return fixture


def _parse_file(path: Path, fixture: Fixture, stack: tuple[Path, ...]) -> None:
    path = path.resolve()
    if path in stack:
        chain = " -> ".join(str(p) for p in (*stack, path))
        raise fail(Where(stack[-1], 1), "include", f"files include each other in a cycle: {chain}")
    if path in fixture.files:
        return
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise fail(None, "", f"cannot read fixture file {path}: {exc.strerror or exc}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        # Where the broken construct began (context) says more than where the parser gave up (problem).
        mark = getattr(exc, "context_mark", None) or getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        raise fail(Where(path, line), "", f"YAML syntax error: {context + ', ' if context else ''}{problem}") from None
    fixture.files.append(path)
    if root is None:
        return
    if not isinstance(root, yaml.MappingNode):
        raise fail(Where(path, root.start_mark.line + 1), "", "a fixture file is a mapping of table names to rows")
    models = models_by_name()
    for key_node, value_node in root.value:
        key = key_node.value
        where = Where(path, key_node.start_mark.line + 1)
        if key == "include":
            items = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for item in items:
                _parse_file(path.parent / item.value, fixture, (*stack, path))
            continue
        model = models.get(key)
        if model is None:
            known = ", ".join(sorted(m._meta.table_name for m in set(models.values())))
            raise fail(where, key, f"unknown table; known tables: {known}")
        _parse_table(model, value_node, path, fixture)


def _parse_table(model: type[Model], node: Any, path: Path, fixture: Fixture) -> None:
    table = model._meta.table_name
    if not isinstance(node, yaml.MappingNode):
        raise fail(Where(path, node.start_mark.line + 1), table, "expected labelled rows (a mapping)")
    for label_node, row_node in node.value:
        label = str(label_node.value)
        where = Where(path, label_node.start_mark.line + 1)
        if label == "_key":
            keys = _plain(row_node)
            keys = [keys] if isinstance(keys, str) else list(keys)
            for key in keys:
                _field(model, key, where, f"{table}._key")
            fixture.keys[table] = keys
        elif label == "_generate":
            specs = row_node.value if isinstance(row_node, yaml.SequenceNode) else [row_node]
            for number, spec in enumerate(specs):
                fixture.generators.append(_parse_generator(model, spec, path, number))
        else:
            if not isinstance(row_node, yaml.MappingNode):
                raise fail(where, f"{table}.{label}", "expected a mapping of column values")
            if any(r.table == table and r.label == label for r in fixture.rows):
                raise fail(where, f"{table}.{label}", "this label is used twice")
            cells = _parse_cells(model, row_node, path, f"{table}.{label}")
            fixture.rows.append(RowSpec(table, label, cells, where))


def _parse_generator(model: type[Model], node: Any, path: Path, number: int) -> Generator:
    table = model._meta.table_name
    where = Where(path, node.start_mark.line + 1)
    if not isinstance(node, yaml.MappingNode):
        raise fail(where, f"{table}._generate", "expected a mapping: count or per, and values")
    options = {k.value: v for k, v in node.value}
    name = str(_plain(options["name"])) if "name" in options else ("gen" if number == 0 else f"gen{number}")
    cells = _parse_cells(model, options["values"], path, f"{table}.{name}") if "values" in options else {}
    gen = Generator(table, name, cells, where)
    if "count" in options:
        gen.count = _plain(options["count"])
        if isinstance(gen.count, bool) or not isinstance(gen.count, int) or gen.count < 0:
            raise fail(where, f"{table}.{name}.count", f"expected a whole number >= 0, got {gen.count!r}")
    elif "per" in options:
        per = _plain(options["per"])
        models = models_by_name()
        if per not in models:
            raise fail(where, f"{table}.{name}.per", f"unknown table {per!r}")
        gen.per = models[per]._meta.table_name
        between = _plain(options.get("between")) if "between" in options else [1, 1]
        between = [between, between] if isinstance(between, int) else between
        if (not isinstance(between, list) or len(between) != 2 or not all(isinstance(b, int) for b in between)
                or not 0 <= between[0] <= between[1]):
            raise fail(where, f"{table}.{name}.between", f"expected [low, high] whole numbers, got {between!r}")
        gen.between = (between[0], between[1])
        gen.parent_column = _plain(options["parent"]) if "parent" in options else None
        if gen.parent_column:
            _field(model, gen.parent_column, where, f"{table}.{name}.parent")
    else:
        raise fail(where, f"{table}.{name}", "a generator needs `count: N` or `per: table`")
    unknown = set(options) - {"name", "count", "per", "between", "parent", "values"}
    if unknown:
        raise fail(where, f"{table}.{name}", f"unknown generator option(s): {', '.join(sorted(unknown))}")
    return gen


def _field(model: type[Model], name: str, where: Where, path: str) -> peewee.Field:
    field_ = model._meta.fields.get(name) or next(
        (f for f in model._meta.sorted_fields if f.column_name == name), None)
    if field_ is None:
        known = ", ".join(f.name for f in model._meta.sorted_fields)
        raise fail(where, path, f"unknown column; {model._meta.table_name} has: {known}")
    return field_


def _parse_cells(model: type[Model], node: Any, path: Path, prefix: str) -> dict[str, Cell]:
    if not isinstance(node, yaml.MappingNode):
        raise fail(Where(path, node.start_mark.line + 1), prefix, "expected a mapping of column values")
    cells = {}
    for key_node, value_node in node.value:
        where = Where(path, key_node.start_mark.line + 1)
        field_ = _field(model, key_node.value, where, f"{prefix}.{key_node.value}")
        cells[field_.name] = Cell(_spec(value_node, path, f"{prefix}.{field_.name}"), where)
    return cells


_SAFE = yaml.SafeLoader("")


def _plain(node: Any) -> Any:
    """A YAML node with standard tags as a Python value."""
    return _SAFE.construct_object(node, deep=True)


_OFFSET = re.compile(r"([+-]?)(\d+)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def _spec(node: Any, path: Path, where_path: str) -> Any:
    """The value specification a YAML node stands for."""
    tag = node.tag
    where = Where(path, node.start_mark.line + 1)
    if tag == "!fake":
        args = _plain(yaml.MappingNode("tag:yaml.org,2002:map", node.value)) if isinstance(
            node, yaml.MappingNode) else {"method": node.value}
        method = args.pop("method", None)
        if not isinstance(method, str) or "." not in method:
            raise fail(where, where_path, "!fake needs provider.method, e.g. !fake person.email")
        locale = args.pop("locale", None)
        return Fake(method, locale, tuple(sorted(args.items())))
    if tag == "!now":
        text = str(node.value or "").replace(" ", "")
        total = dt.timedelta()
        sign = 1
        position = 0
        for match in _OFFSET.finditer(text):
            if match.start() != position:
                break
            sign = -1 if match.group(1) == "-" else (1 if match.group(1) == "+" else sign)
            total += sign * dt.timedelta(**{_UNITS[match.group(3)]: int(match.group(2))})
            position = match.end()
        if position != len(text):
            raise fail(where, where_path, f"!now takes an offset like -7d, +2h or -1d12h, got {node.value!r}")
        return Now(total)
    if tag == "!env":
        if isinstance(node, yaml.MappingNode):
            args = _plain(yaml.MappingNode("tag:yaml.org,2002:map", node.value))
            return Env(str(args["name"]), args.get("default"), "default" in args)
        return Env(str(node.value))
    if tag == "!choice":
        if isinstance(node, yaml.MappingNode):
            pairs = _plain(yaml.MappingNode("tag:yaml.org,2002:map", node.value))
            weights = tuple(pairs.values())
            if not all(isinstance(w, (int, float)) and w >= 0 for w in weights) or not sum(weights):
                raise fail(where, where_path, "!choice weights must be numbers >= 0, not all zero")
            return Choice(tuple(pairs), weights)
        options = _plain(yaml.SequenceNode("tag:yaml.org,2002:seq", node.value))
        if not options:
            raise fail(where, where_path, "!choice needs at least one option")
        return Choice(tuple(options), None)
    if tag == "!pick":
        if isinstance(node, yaml.MappingNode):
            args = _plain(yaml.MappingNode("tag:yaml.org,2002:map", node.value))
            return Pick(str(args["table"]), bool(args.get("unique", False)), args.get("match"))
        return Pick(str(node.value))
    if tag == "!embedding":
        if isinstance(node, yaml.MappingNode):
            args = _plain(yaml.MappingNode("tag:yaml.org,2002:map", node.value))
            file = (path.parent / args["file"]) if "file" in args else None
            return Embedding(file, args.get("row"))
        return Embedding()
    if tag == "!password":
        return Password(str(node.value))
    if tag == "!format":
        return Format(str(node.value))
    if tag == "!index":
        return Index()
    if tag.startswith("!"):
        raise fail(where, where_path, f"unknown tag {tag}; the kit knows {', '.join(TAGS)}")
    if isinstance(node, yaml.MappingNode) and len(node.value) == 1 and node.value[0][0].value == "$find":
        criteria = _plain(node.value[0][1])
        if not isinstance(criteria, dict) or not criteria:
            raise fail(where, where_path, "$find takes a mapping of column values, e.g. {$find: {slug: pro}}")
        return Find(tuple(sorted(criteria.items())))
    if isinstance(node, yaml.MappingNode):  # plain structures may hold tagged values anywhere inside
        return {_plain(k): _spec(v, path, f"{where_path}.{k.value}") for k, v in node.value}
    if isinstance(node, yaml.SequenceNode):
        return [_spec(v, path, f"{where_path}[{i}]") for i, v in enumerate(node.value)]
    value = _plain(node)
    if isinstance(value, str) and value.startswith("@") and not value.startswith("@@"):
        parts = value[1:].split(".")
        if parts[0] == "parent" and len(parts) == 2:
            return Ref("@parent", None, parts[1])
        if len(parts) not in (2, 3) or not all(parts):
            raise fail(where, where_path, f"a reference looks like @table.label or @table.label.column, got {value!r}")
        return Ref(parts[0], parts[1], parts[2] if len(parts) == 3 else None)
    if isinstance(value, str) and value.startswith("@@"):
        return value[1:]  # "@@text" writes a literal "@text"
    return value


# -- resolve ----------------------------------------------------------------------------------------


@dataclass
class Counts:
    """Rows a load inserted, updated and left unchanged in one table."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0


def seed_for(seed: int, *parts: object) -> int:
    """A 64-bit seed for one value: the same seed, table, label and column always give the same one."""
    text = "|".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def hash_password(plain: str, salt: str) -> str:
    """Better Auth's password hash: scrypt (N=16384, r=16, p=1, 64 bytes) as `salt:key` in hex."""
    text = unicodedata.normalize("NFKC", plain)
    key = hashlib.scrypt(text.encode("utf-8"), salt=salt.encode(), n=16384, r=16, p=1, dklen=64, maxmem=64 << 20)
    return f"{salt}:{key.hex()}"


class Resolver:
    """Turns specifications into column values: generated rows, fake data, references, ids."""

    def __init__(self, fixture: Fixture, seed: int, database: peewee.Database,
                 progress: Callable[[str, int, int], None] | None = None) -> None:
        from kit.models import ALL_MODELS

        self.fixture, self.seed, self.database = fixture, seed, database
        self.models = {m._meta.table_name: m for m in ALL_MODELS}
        self.order = [m._meta.table_name for m in peewee.sort_models(ALL_MODELS)]
        self.progress = progress or (lambda table, done, total: None)
        self.now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        self.rows: dict[str, dict[str, RowSpec]] = {}
        for row in fixture.rows:
            self.rows.setdefault(row.table, {})[row.label] = row
        self._values: dict[tuple[str, str, str], Any] = {}
        self._busy: list[tuple[str, str, str]] = []
        self._ids: dict[str, dict[str, uuid.UUID]] = {}
        self._id_hashes: dict[str, Any] = {}
        self._unique_picks: dict[tuple, tuple[random.Random, set[int]]] = {}
        self._candidates: dict[tuple, list] = {}
        self._fakers: dict[str | None, Any] = {}
        self._arrays: dict[Path, np.ndarray] = {}
        self._passwords: dict[str, str] = {}
        self._blocks: collections.OrderedDict[tuple, list] = collections.OrderedDict()
        self._converters: dict[peewee.Field, Callable[[Any], Any]] = {}
        self.before_query: Callable[[], None] | None = None  # the loader frees the connection here
        self._expand()

    # generated rows
    def _expand(self) -> None:
        generators = sorted(self.fixture.generators, key=lambda g: self.order.index(g.table))
        for gen in generators:
            made = 0
            if gen.count is not None:
                group = Group(gen, None, gen.count)
                for i in range(gen.count):
                    self._add(RowSpec(gen.table, f"{gen.name}.{i}", gen.cells, gen.where, index=i, position=i,
                                      group=group))
                made = gen.count
            else:
                parents = list(self.rows.get(gen.per, {}))
                low, high = gen.between
                for parent in parents:
                    count = random.Random(seed_for(self.seed, gen.table, gen.name, parent, "#count")).randint(low, high)
                    group = Group(gen, parent, count)
                    cells = dict(gen.cells)  # one parent's rows share their cells
                    if gen.parent_column:
                        cells[self._field(gen.table, gen.parent_column).name] = Cell(Ref(gen.per, parent, None),
                                                                                    gen.where)
                    for i in range(count):
                        self._add(RowSpec(gen.table, f"{gen.name}.{parent}.{i}", cells, gen.where, index=made,
                                          parent=(gen.per, parent), position=i, group=group))
                        made += 1
            self.progress(gen.table, made, made)

    def _add(self, row: RowSpec) -> None:
        self.rows.setdefault(row.table, {})[row.label] = row

    def _field(self, table: str, name: str) -> peewee.Field:
        model = self.models[table]
        return model._meta.fields.get(name) or next(f for f in model._meta.sorted_fields if f.column_name == name)

    # ids
    def id_of(self, table: str, label: str) -> uuid.UUID:
        """The id a labelled row has or will have (adopting an existing row's id by natural key)."""
        ids = self._ids.get(table)
        if ids is None:
            ids = self._ids[table] = self._assign_ids(table)
        found = ids.get(label)
        if found is None:  # uuid5(ID_NAMESPACE, "table:label"), made when first asked for
            digest = self._id_hashes[table].copy()
            digest.update(label.encode())
            found = ids[label] = uuid.UUID(bytes=digest.digest()[:16], version=5)
        return found

    def _assign_ids(self, table: str) -> dict[str, uuid.UUID]:
        """The ids given in the file, and those adopted from existing rows by natural key."""
        rows = self.rows.get(table, {})
        self._id_hashes[table] = hashlib.sha1(ID_NAMESPACE.bytes + f"{table}:".encode())
        ids: dict[str, uuid.UUID] = {}
        for label, row in rows.items():
            if "id" in row.cells:
                ids[label] = self._convert(table, label, "id", self._evaluate(row, "id"))
        keys = self.fixture.keys.get(table)
        if keys and rows:
            model = self.models[table]
            fields = [self._field(table, k) for k in keys]
            wanted = {}
            for label, row in rows.items():
                if "id" not in row.cells:
                    wanted[tuple(self.value(table, label, f.name) for f in fields)] = label
            columns = ", ".join(f'"{f.column_name}"' for f in fields)
            sql = f'SELECT id, {columns} FROM "{model._meta.table_name}"'
            params: tuple = ()
            if len(fields) == 1:  # look up only the keys this load gives, not the whole table
                keys = [k[0] for k in wanted]
                if keys and all(isinstance(k, uuid.UUID) for k in keys):
                    sql += f' WHERE "{fields[0].column_name}" = ANY(%s::uuid[])'
                    keys = [str(k) for k in keys]
                else:
                    sql += f' WHERE "{fields[0].column_name}" = ANY(%s)'
                params = (keys,)
            found = self._query(sql, params).fetchall()
            for existing_id, *key in found:
                label = wanted.get(tuple(str(k) if isinstance(k, uuid.UUID) else k for k in key))
                if label is None:
                    label = wanted.get(tuple(key))
                if label is not None:
                    ids[label] = existing_id if isinstance(existing_id, uuid.UUID) else uuid.UUID(str(existing_id))
        return ids

    def _query(self, sql: str, params: Any = ()) -> Any:
        if self.before_query is not None:
            self.before_query()
        return self.database.execute_sql(sql, params)

    # values
    def value(self, table: str, label: str, column: str) -> Any:
        """The value of one cell (resolving what it depends on first), converted to the column's type."""
        key = (table, label, column)
        if key in self._values:
            return self._values[key]
        if column == "id":
            return self.id_of(table, label)
        row = self.rows[table][label]
        cell = row.cells.get(column)
        if row.group is not None and cell is not None and _drawn_per_block(cell.spec):
            return self._block(row, column)[row.position % BLOCK_ROWS]
        if key in self._busy:
            cycle = " -> ".join(".".join(k) for k in [*self._busy[self._busy.index(key):], key])
            row = self.rows[table][label]
            raise fail(row.cells[column].where, ".".join(key), f"references form a cycle: {cycle}")
        row = self.rows[table][label]
        if column not in row.cells:
            asker = self._busy[-1] if self._busy else (table, label, column)
            raise fail(row.where, ".".join(asker), f"{table}.{label} gives no value for {column}")
        self._busy.append(key)
        try:
            result = self._convert(table, label, column, self._evaluate(row, column))
        finally:
            self._busy.pop()
        if row.group is None or not isinstance(cell.spec, _CHEAP):  # generated rows: keep what is costly to redo
            self._values[key] = result
        return result

    # generated rows draw their random values a block at a time
    def _block(self, row: RowSpec, column: str) -> list[Any]:
        """The converted values of `column` for the block of generated rows that holds `row`."""
        group, block = row.group, row.position // BLOCK_ROWS
        key = (group, column, block)
        values = self._blocks.get(key)
        if values is None:
            values = self._blocks[key] = self._draw_block(row, column, block)
            if len(self._blocks) > KEPT_BLOCKS:
                self._blocks.popitem(last=False)
        return values

    def _draw_block(self, row: RowSpec, column: str, block: int) -> list[Any]:
        """Draw a block of a generated column from one random stream: seed, table, generator, parent, column, block."""
        group = row.group
        gen, table = group.generator, row.table
        cell = row.cells[column]
        spec, where, path = cell.spec, cell.where, f"{table}.{row.label}.{column}"
        count = min(BLOCK_ROWS, group.size - block * BLOCK_ROWS)
        rng_seed = seed_for(self.seed, table, gen.name, group.parent or "", column, block)
        field_ = self._field(table, column)
        if isinstance(spec, Embedding):
            if not isinstance(field_, VectorField):
                raise fail(where, path, "!embedding is for vector columns")
            return list(unit_vectors(rng_seed, count, field_.dimensions, field_.dtype))
        if isinstance(spec, Fake):
            provider, method = self._fake_method(spec, where, path)
            provider.reseed(rng_seed)
            kwargs = dict(spec.kwargs)
            try:
                values = [method(**kwargs) for _ in range(count)]
            except TypeError as exc:
                raise fail(where, path, f"!fake {spec.method}: {exc}") from None
        elif isinstance(spec, Choice):
            values = random.Random(rng_seed).choices(spec.options, weights=spec.weights, k=count)
        else:  # a Pick, with replacement
            candidates = self._candidates_for(spec, where, path)
            picked = random.Random(rng_seed).choices(candidates, k=count)
            values = [self.id_of(spec_table, value) if kind == "label" else value
                      for spec_table, kind, value in picked]
        convert = self._converter(field_)
        try:
            return [None if value is None else convert(value) for value in values]
        except (TypeError, ValueError, decimal.InvalidOperation):
            for position, value in enumerate(values):  # name the first row whose value does not fit
                label = _generated_label(group, block * BLOCK_ROWS + position)
                self._convert(table, label, column, value)
            raise

    def _evaluate(self, row: RowSpec, column: str) -> Any:
        cell = row.cells[column]
        return self._evaluate_spec(row, column, cell.spec, cell.where, f"{row.table}.{row.label}.{column}")

    def _evaluate_spec(self, row: RowSpec, column: str, spec: Any, where: Where, path: str) -> Any:
        if isinstance(spec, dict):
            return {k: self._evaluate_spec(row, column, v, where, f"{path}.{k}") for k, v in spec.items()}
        if isinstance(spec, list):
            return [self._evaluate_spec(row, column, v, where, f"{path}[{i}]") for i, v in enumerate(spec)]
        if isinstance(spec, (Fake, Choice, Pick, Embedding)):  # random: seeded from seed, table, label, column
            rng_seed = seed_for(self.seed, row.table, row.label, path)
            if isinstance(spec, Fake):
                return self._fake(spec, rng_seed, where, path)
            if isinstance(spec, Choice):  # the 64-bit seed itself is the uniform draw
                if not spec.weights:
                    return spec.options[rng_seed % len(spec.options)]
                point = rng_seed / 2**64 * sum(spec.weights)
                return spec.options[min(bisect.bisect_right(list(itertools.accumulate(spec.weights)), point),
                                        len(spec.options) - 1)]
            if isinstance(spec, Pick):
                return self._pick(row, column, spec, rng_seed, where, path)
            return self._embedding(row, column, spec, rng_seed, where, path)
        if isinstance(spec, Ref):
            return self._ref(row, spec, where, path)
        if isinstance(spec, Now):
            return self.now + spec.offset
        if isinstance(spec, Env):
            if spec.name in os.environ:
                return os.environ[spec.name]
            if spec.has_default:
                return spec.default
            raise fail(where, path, f"environment variable {spec.name} is not set and no default is given")
        if isinstance(spec, Password):
            if spec.plain not in self._passwords:
                salt = hashlib.blake2b(f"{self.seed}|{spec.plain}".encode(), digest_size=16).hexdigest()
                self._passwords[spec.plain] = hash_password(spec.plain, salt)
            return self._passwords[spec.plain]
        if isinstance(spec, Format):
            parent = row.parent[1] if row.parent else ""
            try:
                return spec.template.format(n=row.index if row.index is not None else 0, label=row.label, parent=parent)
            except (KeyError, IndexError, ValueError) as exc:
                raise fail(where, path,
                           f"!format template {spec.template!r}: {exc}; use {{n}}, {{label}}, {{parent}}") from None
        if isinstance(spec, Find):
            return self._find(row, column, spec, where, path)
        if isinstance(spec, Index):
            if row.position is None:
                raise fail(where, path, "!index is only known in generated rows")
            return row.position
        return spec

    def _ref(self, row: RowSpec, ref: Ref, where: Where, path: str) -> Any:
        if ref.table == "@parent":
            if row.parent is None:
                raise fail(where, path, "@parent is only known in rows generated per parent")
            table, label = row.parent
            self._check_column(table, ref.column, where, path)
            return self.value(table, label, self._field(table, ref.column).name)
        model = self.models.get(ref.table) or models_by_name().get(ref.table)
        if model is None:
            raise fail(where, path, f"@{ref.table}.{ref.label}: unknown table {ref.table!r}")
        table = model._meta.table_name
        if ref.label not in self.rows.get(table, {}):
            raise fail(where, path, f"missing reference @{ref.table}.{ref.label}: no row labelled "
                                    f"{ref.label!r} in {table} (in these files or their includes)")
        if ref.column is None:
            return self.id_of(table, ref.label)
        self._check_column(table, ref.column, where, path)
        return self.value(table, ref.label, self._field(table, ref.column).name)

    def _check_column(self, table: str, column: str, where: Where, path: str) -> None:
        model = self.models[table]
        if column not in model._meta.fields and column not in {f.column_name for f in model._meta.sorted_fields}:
            raise fail(where, path, f"{table} has no column {column!r}")

    def _fake(self, spec: Fake, rng_seed: int, where: Where, path: str) -> Any:
        provider, method = self._fake_method(spec, where, path)
        provider.reseed(rng_seed)
        try:
            return method(**dict(spec.kwargs))
        except TypeError as exc:
            raise fail(where, path, f"!fake {spec.method}: {exc}") from None

    def _fake_method(self, spec: Fake, where: Where, path: str) -> tuple[Any, Callable[..., Any]]:
        """The mimesis provider and method a !fake names."""
        from mimesis import Generic, Locale

        generic = self._fakers.get(spec.locale)
        if generic is None:
            try:
                locale = Locale(spec.locale) if spec.locale else Locale.EN
            except ValueError:
                raise fail(where, path, f"unknown mimesis locale {spec.locale!r}") from None
            generic = self._fakers[spec.locale] = Generic(locale=locale, seed=self.seed)
        provider_name, _, method_name = spec.method.partition(".")
        provider = getattr(generic, provider_name, None)
        method = getattr(provider, method_name, None) if provider is not None else None
        if not callable(method):
            raise fail(where, path, f"!fake {spec.method}: mimesis has no such provider method")
        return provider, method

    def _candidates_for(self, spec: Pick, where: Where, path: str) -> list[tuple[str, str, Any]]:
        """The rows a !pick chooses among: (table, "label", label) or (table, "id", id)."""
        model = self.models.get(spec.table) or models_by_name().get(spec.table)
        if model is None:
            raise fail(where, path, f"!pick {spec.table}: unknown table")
        table = model._meta.table_name
        candidates = self._candidates.get((table, spec.match))
        if candidates is None:
            found = self._pick_candidates(table, spec, where, path)
            candidates = self._candidates[(table, spec.match)] = [(table, kind, value) for kind, value in found]
        return candidates

    def _pick(self, row: RowSpec, column: str, spec: Pick, rng_seed: int, where: Where, path: str) -> Any:
        candidates = self._candidates_for(spec, where, path)
        table = candidates[0][0] if candidates else spec.table
        if spec.unique:  # without replacement within one parent's rows (or the whole table)
            scope = (row.table, column, table, row.parent)
            if scope not in self._unique_picks:
                self._unique_picks[scope] = (random.Random(seed_for(self.seed, *scope)), set())
            rng, used = self._unique_picks[scope]
            if len(used) >= len(candidates):
                raise fail(where, path, f"!pick {table} unique: ran out of distinct {table} rows ({len(candidates)})")
            index = rng.randrange(len(candidates))
            while index in used:
                index = rng.randrange(len(candidates))
            used.add(index)
            _, kind, value = candidates[index]
        else:
            _, kind, value = candidates[rng_seed % len(candidates)]
        return self.id_of(table, value) if kind == "label" else value

    def _pick_candidates(self, table: str, spec: Pick, where: Where, path: str) -> list[tuple[str, Any]]:
        labels = list(self.rows.get(table, {}))
        if spec.match:
            labels = [label for label in labels if fnmatch.fnmatchcase(label, spec.match)]
            if not labels:
                raise fail(where, path, f"!pick {table}: no {table} row label matches {spec.match!r}")
        if labels:
            return [("label", label) for label in labels]
        cursor = self._query(f'SELECT id FROM "{table}" ORDER BY id LIMIT 100000')
        return [("id", r[0]) for r in cursor.fetchall()]

    def _embedding(self, row: RowSpec, column: str, spec: Embedding, rng_seed: int, where: Where, path: str) -> Any:
        field_ = self._field(row.table, column)
        if not isinstance(field_, VectorField):
            raise fail(where, path, "!embedding is for vector columns")
        if spec.file is None:
            return unit_vectors(rng_seed, 1, field_.dimensions, field_.dtype)[0]
        if spec.file not in self._arrays:
            try:
                self._arrays[spec.file] = np.load(spec.file, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise fail(where, path, f"cannot read {spec.file}: {exc}") from None
        array = self._arrays[spec.file]
        index = spec.row if spec.row is not None else (row.index or 0)
        if array.ndim != 2 or not 0 <= index < array.shape[0]:
            raise fail(where, path, f"{spec.file} has shape {array.shape}; row {index} does not exist")
        return np.asarray(array[index])

    def _find(self, row: RowSpec, column: str, spec: Find, where: Where, path: str) -> Any:
        field_ = self._field(row.table, column)
        if not isinstance(field_, ForeignKeyField):
            raise fail(where, path, "$find is for foreign key columns")
        target = field_.rel_model._meta.table_name
        criteria = dict(spec.criteria)
        for name in criteria:
            self._check_column(target, name, where, path)
        for label in self.rows.get(target, {}):
            if all(self.value(target, label, self._field(target, k).name) == v for k, v in criteria.items()):
                return self.id_of(target, label)
        conditions = " AND ".join(f'"{self._field(target, k).column_name}" = %s' for k in criteria)
        found = self._query(f'SELECT id FROM "{target}" WHERE {conditions} LIMIT 2',
                                          tuple(criteria.values())).fetchall()
        described = ", ".join(f"{k} = {v!r}" for k, v in criteria.items())
        if not found:
            raise fail(where, path, f"$find: no {target} row with {described} in these files or the database")
        if len(found) > 1:
            raise fail(where, path, f"$find: more than one {target} row with {described}")
        return found[0][0]

    def _convert(self, table: str, label: str, column: str, value: Any) -> Any:
        """Check a value against its column's type and return it in the form the loader writes."""
        field_ = self._field(table, column)
        row = self.rows[table][label]
        where = row.cells[column].where if column in row.cells else row.where
        path = f"{table}.{label}.{column}"
        if value is None:
            return None
        try:
            return self._converter(field_)(value)
        except VectorValueError as exc:
            raise fail(where, path, str(exc).split(": ", 1)[-1]) from None
        except (TypeError, ValueError, decimal.InvalidOperation) as exc:
            raise fail(where, path, str(exc)) from None

    def _sibling_values(self, run: list[RowSpec], column: str, spec: Any) -> list[Any]:
        """One column's values for generated siblings, computed once where they cannot differ."""
        first = run[0]
        table = first.table
        if _drawn_per_block(spec):
            drawn = self._block(first, column)
            return [drawn[row.position % BLOCK_ROWS] for row in run]
        if isinstance(spec, _SHARED):  # the same for siblings: same cells, same parent
            return [self.value(table, first.label, column)] * len(run)
        if isinstance(spec, Index):
            convert = self._converter(self._field(table, column))
            try:
                return [convert(row.position) for row in run]
            except (TypeError, ValueError):
                pass  # the row by row way below names the row
        return [self.value(table, row.label, column) for row in run]

    def _converter(self, field_: peewee.Field) -> Callable[[Any], Any]:
        convert = self._converters.get(field_)
        if convert is None:
            convert = self._converters[field_] = _converter(field_)
        return convert

    def table_rows(self, table: str) -> Iterator[tuple[RowSpec, dict[str, Any]]]:
        """Each row of `table` with its resolved values (id included)."""
        rows = list(self.rows.get(table, {}).values())
        total, start, reported = len(rows), 0, 0
        while start < total:
            first = rows[start]
            end = start + 1
            if first.group is not None:  # a run of siblings in one block: whole columns at once
                block = first.position // BLOCK_ROWS
                while end < total and rows[end].group is first.group and rows[end].position // BLOCK_ROWS == block:
                    end += 1
            run = rows[start:end]
            if first.group is None:
                columns = [[self.value(table, first.label, column)] for column in first.cells]
            else:
                columns = [self._sibling_values(run, column, cell.spec) for column, cell in first.cells.items()]
            names = ["id", *first.cells]
            ids = [self.id_of(table, row.label) for row in run]
            for row, values in zip(run, zip(ids, *columns, strict=True), strict=True):
                yield row, dict(zip(names, values, strict=True))
            start = end
            if start - reported >= 2000 or start == total:
                self.progress(table, start, total)
                reported = start


BLOCK_ROWS = 1024  # generated rows draw their random values this many at a time
KEPT_BLOCKS = 64  # drawn blocks kept for later lookups (references into generated rows)
_CHEAP = (Ref, Format, Index, Now, Env, str, int, float, bool, type(None))  # recomputed rather than kept
_SHARED = (Ref, Now, Env, Find, Password, str, int, float, bool, type(None))  # the same in all of a group's rows


def _drawn_per_block(spec: Any) -> bool:
    """Whether a generated column's values come from one random stream per block of rows."""
    if isinstance(spec, (Fake, Choice)):
        return True
    if isinstance(spec, Pick):
        return not spec.unique  # unique picks share state across a parent's rows: one at a time
    return isinstance(spec, Embedding) and spec.file is None


def _generated_label(group: Group, position: int) -> str:
    gen = group.generator
    return f"{gen.name}.{group.parent}.{position}" if group.parent is not None else f"{gen.name}.{position}"


@functools.cache
def _normal_quantiles() -> np.ndarray:
    """The standard normal distribution at 65,536 evenly spaced probabilities: a 16-bit normal sampler."""
    inverse = statistics.NormalDist().inv_cdf
    upper = np.array([inverse((i + 0.5) / 65536) for i in range(32768, 65536)], dtype=np.float32)
    return np.concatenate([-upper[::-1], upper])  # symmetric: the lower half mirrors the upper


def unit_vectors(seed: int, rows: int, dimensions: int, dtype: Any = np.float32) -> np.ndarray:
    """`rows` random unit-length vectors, uniform in direction; the same seed gives the same vectors.

    Each element is a normal draw quantised to 16 bits (random bits looked up in a table of normal
    quantiles), which is 3-4x faster than numpy's normal sampler and makes no visible difference here.
    """
    bits = np.random.Generator(np.random.SFC64(seed)).bytes(rows * dimensions * 2)
    matrix = np.take(_normal_quantiles(), np.frombuffer(bits, dtype="<u2").reshape(rows, dimensions))
    matrix /= np.sqrt(np.einsum("ij,ij->i", matrix, matrix))[:, None]
    return matrix.astype(dtype, copy=False)


def _type_name(value: Any) -> str:
    return type(value).__name__


def _converter(field_: peewee.Field) -> Callable[[Any], Any]:
    """The check of a (non-NULL) value against the field's type, returning the value the loader writes."""
    if isinstance(field_, (ForeignKeyField, UUIDField)):
        return _to_uuid
    if isinstance(field_, VectorField):
        return field_.to_array
    if isinstance(field_, BinaryJSONField):
        return _to_json
    for kind, convert in _CONVERTERS:
        if isinstance(field_, kind):
            return convert
    return lambda value: value


def _to_uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def _to_json(value: Any) -> Any:
    json.dumps(value)
    return value


def _to_bool(value: Any) -> bool:
    if value is True or value is False:
        return value
    raise TypeError(f"expected true or false, got {_type_name(value)} {value!r}")


def _to_int(value: Any) -> int:
    if type(value) is int or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise TypeError(f"expected a whole number, got {_type_name(value)} {value!r}")


def _to_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {_type_name(value)} {value!r}")
    return float(value)


def _to_decimal(value: Any) -> decimal.Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, str, decimal.Decimal)):
        raise TypeError(f"expected a number, got {_type_name(value)} {value!r}")
    try:
        return decimal.Decimal(str(value))
    except decimal.InvalidOperation:
        raise ValueError(f"expected a number, got {value!r}") from None


def _to_timestamp(value: Any) -> dt.datetime:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    if not isinstance(value, dt.datetime):
        raise TypeError(f"expected a timestamp, got {_type_name(value)} {value!r}")
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def _to_date(value: Any) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, str):
        return dt.date.fromisoformat(value)
    if not isinstance(value, dt.date):
        raise TypeError(f"expected a date, got {_type_name(value)} {value!r}")
    return value


def _to_text(value: Any) -> str:
    if type(value) is str or isinstance(value, str):
        return value
    raise TypeError(f"expected text, got {_type_name(value)} {value!r}")


_CONVERTERS: list[tuple[type | tuple[type, ...], Callable[[Any], Any]]] = [
    (BooleanField, _to_bool),
    (IntegerField, _to_int),
    (FloatField, _to_float),
    (DecimalField, _to_decimal),
    ((DateTimeTZField, DateTimeField), _to_timestamp),
    (DateField, _to_date),
    ((TextField, peewee.CharField), _to_text),
]


# -- load -------------------------------------------------------------------------------------------


class _DryRun(Exception):
    pass


def touched_tables(fixture: Fixture) -> list[str]:
    """The tables a fixture writes, in foreign-key order."""
    from kit.models import ALL_MODELS

    tables = {r.table for r in fixture.rows} | {g.table for g in fixture.generators}
    return [m._meta.table_name for m in peewee.sort_models(ALL_MODELS) if m._meta.table_name in tables]


def load(fixture: Fixture, database: peewee.Database | None = None, seed: int = 0, reset: bool = False,
         dry_run: bool = False, progress: Callable[[str, int, int], None] | None = None,
         notes: Callable[[str], None] | None = None) -> dict[str, Counts]:
    """Load a fixture in one transaction (all or nothing); return the counts per table, in load order."""
    if database is None:
        from kit.db import database
    notes = notes or (lambda message: None)
    tables = touched_tables(fixture)
    report: dict[str, Counts] = {}
    committing = False
    try:
        with database.atomic():
            if reset:
                emptied = [t for t in tables if t not in APPEND_ONLY]
                if emptied:
                    database.execute_sql("TRUNCATE " + ", ".join(f'"{t}"' for t in emptied) + " CASCADE")
                for table in sorted(set(tables) & APPEND_ONLY):
                    notes(f"--reset keeps {table}: it is append-only")
            resolver = Resolver(fixture, seed, database, progress)
            deferred = _defer_vector_indexes(database, resolver, tables)
            plans: list[_Plan] = []
            for table in tables:  # every question to the database first: then the tables stream back to back
                plan = _plan(database, resolver, table, plans[-1].writer if plans else None)
                if plan is None:
                    report[table] = Counts()
                else:
                    plans.append(plan)
            _write_all(database, resolver, plans, report)
            if deferred:
                database.execute_sql("SET LOCAL maintenance_work_mem = '512MB'")
                for index in deferred:
                    database.execute_sql(*database.get_sql_context().sql(index).query())
            if dry_run:
                raise _DryRun()
            committing = True
    except _DryRun:
        pass
    except (peewee.OperationalError, peewee.InterfaceError) as exc:
        if _connection_lost(exc):
            cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if committing:
                raise FixtureError(f"lost the connection to the database while committing ({cause}): the load may or "
                                   "may not have been written; run it again (it is idempotent) to be sure") from None
            raise FixtureError(f"lost the connection to the database during the load ({cause}); the transaction "
                               "was never committed, so nothing was written") from None
        raise
    return {table: report[table] for table in tables}


def _connection_lost(exc: BaseException) -> bool:
    """Whether an error (or what caused it) is the connection going away, rather than the server refusing."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, psycopg2.InterfaceError):
            return True
        if isinstance(seen, psycopg2.OperationalError) and seen.pgcode is None:
            return True  # no SQLSTATE: the server did not answer
        seen = seen.__cause__ or seen.__context__
    return False


DEFER_INDEX_ROWS = 2_000  # at least this many rows, and more than the table holds: rebuild vector indexes after


def _defer_vector_indexes(database: peewee.Database, resolver: Resolver, tables: list[str]) -> list[VectorIndex]:
    """For large loads into small tables, drop their vector indexes; the caller builds them afresh at the end.

    Inserting into an HNSW graph costs more per row (several ms at 1536 dimensions) than building the
    graph once from all the rows; both happen inside the load's transaction, so nothing is half-done.
    """
    deferred = []
    for table in tables:
        indexes = [i for i in resolver.models[table]._meta.fields_to_index() if isinstance(i, VectorIndex)]
        rows = len(resolver.rows.get(table, {}))
        if not indexes or rows < DEFER_INDEX_ROWS:
            continue
        held = database.execute_sql(f'SELECT count(*) FROM (SELECT 1 FROM "{table}" LIMIT %s) AS s',
                                    (rows,)).fetchone()[0]
        live = {r[0] for r in database.execute_sql("SELECT indexname FROM pg_indexes WHERE tablename = %s",
                                                   (table,))}
        for index in [i for i in indexes if i._name in live] if held < rows else []:
            database.execute_sql(f'DROP INDEX "{index._name}"')
            deferred.append(index)
    return deferred


@dataclass
class _Plan:
    """How one table's rows are written: the columns, and straight in or through a staging table."""

    table: str
    specs: list[RowSpec]
    names: list[str]
    fields: dict[str, peewee.Field]
    insert_only: set[str]
    stage: str | None
    writer: CopyWriter


def _plan(database: peewee.Database, resolver: Resolver, table: str, previous: CopyWriter | None) -> _Plan | None:
    model = resolver.models[table]
    specs = list(resolver.rows.get(table, {}).values())
    if not specs:
        return None
    given = set().union(*(row.cells.keys() for row in specs))
    names = ["id"] + [f.name for f in model._meta.sorted_fields if f.name != "id" and f.name in given]
    insert_only = {c for cells in {id(r.cells): r.cells for r in specs}.values()
                   for c, cell in cells.items() if isinstance(cell.spec, Now)}
    fields = {n: model._meta.fields[n] for n in names}
    stage = None
    if database.execute_sql(f'SELECT EXISTS (SELECT 1 FROM "{table}")').fetchone()[0]:
        ids = [str(resolver.id_of(table, row.label)) for row in specs]
        if database.execute_sql(f'SELECT EXISTS (SELECT 1 FROM "{table}" WHERE id = ANY(%s::uuid[]))',
                                (ids,)).fetchone()[0]:
            stage = f"kit_seed_{table}"  # rows to compare with: load them aside first
            database.execute_sql(f'DROP TABLE IF EXISTS "{stage}"')
            database.execute_sql(f'CREATE TEMP TABLE "{stage}" (LIKE "{table}" INCLUDING DEFAULTS) ON COMMIT DROP')
    writer = CopyWriter(model, names, database, table=stage, after=previous)
    return _Plan(table, specs, names, fields, insert_only, stage, writer)


def _write_all(database: peewee.Database, resolver: Resolver, plans: list[_Plan], report: dict[str, Counts]) -> None:
    """Stream every table's rows in order; a table is resolved while the server takes the one before."""
    if not plans:
        return
    last = plans[-1].writer
    current = plans[0]
    try:
        for current in plans:
            report[current.table] = _write(database, resolver, current)
        last.wait()
    except (peewee.DatabaseError, CopyRowError) as exc:
        last.abort()
        failed = next((p for p in plans if p.writer is getattr(exc, "copy_writer", None)), current)
        raise _row_error(exc, failed.specs, failed.table) from None
    except BaseException:
        last.abort()  # no worker may use the connection while the transaction rolls back
        raise


def _write(database: peewee.Database, resolver: Resolver, plan: _Plan) -> Counts:
    """Write one table's rows: straight into it when none exist yet, else through the staging table."""
    table, names, fields, writer = plan.table, plan.names, plan.fields, plan.writer

    def complete_rows() -> Iterator[dict[str, Any]]:
        for _, values in resolver.table_rows(table):
            if len(values) != len(names):  # a row that leaves out a column others give: its default
                values = {n: values[n] if n in values else _default(fields[n]) for n in names}
            yield values

    resolver.before_query = writer.pause  # the resolver needs the connection: let the COPYs in flight end
    try:
        writer.write(complete_rows())
        writer.end()
    finally:
        resolver.before_query = None
    if not plan.stage:
        return Counts(inserted=len(plan.specs))
    writer.wait()
    stage, model = plan.stage, resolver.models[table]
    columns = [fields[n].column_name for n in names]
    compared = [fields[n].column_name for n in names
                if n != "id" and n not in plan.insert_only and n not in ("created_at", "updated_at")]
    listed = ", ".join(f'"{c}"' for c in columns)
    statement = f'INSERT INTO "{table}" AS t ({listed}) SELECT {listed} FROM "{stage}"'
    if compared and table not in APPEND_ONLY:  # append-only rows are never updated: existing ones are kept
        changes = ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in compared)
        if "updated_at" in model._meta.fields and "updated_at" not in names:
            changes += ", updated_at = now()"
        old = ", ".join(f't."{c}"' for c in compared)
        new = ", ".join(f'EXCLUDED."{c}"' for c in compared)
        statement += f" ON CONFLICT (id) DO UPDATE SET {changes} WHERE ROW({old}) IS DISTINCT FROM ROW({new})"
    else:
        statement += " ON CONFLICT (id) DO NOTHING"
    try:
        with database.atomic():
            flags = [r[0] for r in database.execute_sql(statement + " RETURNING (xmax = 0)").fetchall()]
    except peewee.DatabaseError as exc:
        ids = [str(resolver.id_of(table, row.label)) for row in plan.specs]
        _diagnose(database, statement, stage, plan.specs, ids, table, exc)
        raise
    inserted = sum(flags)
    return Counts(inserted, len(flags) - inserted, len(plan.specs) - len(flags))


def _row_error(exc: Exception, specs: list[RowSpec], table: str) -> FixtureError:
    """A copy error ("row N: ...") placed at row N's line in its fixture file."""
    message = str(exc).strip()
    match = re.match(r"row (\d+): (.*)", message, re.S)
    if not match or int(match.group(1)) >= len(specs):
        return fail(None, table, message.splitlines()[0])
    row = specs[int(match.group(1))]
    cause = exc.__cause__ if isinstance(exc.__cause__, Exception) else None
    if cause is not None and getattr(cause, "diag", None) is not None:
        return _database_error(cause, table, row)
    text = match.group(2).splitlines()[0]
    column = next((n for n in row.cells if f".{n}:" in text), None)
    where = row.cells[column].where if column else row.where
    return fail(where, f"{table}.{row.label}" + (f".{column}" if column else ""), text)


def _database_error(original: Any, table: str, row: RowSpec) -> FixtureError:
    """A database error about `row`, placed at the line of the column it names (or of the row)."""
    diag = getattr(original, "diag", None)
    column = getattr(diag, "column_name", None)
    constraint = getattr(diag, "constraint_name", None) or ""
    if column is None and constraint.startswith(f"{table}_") and constraint.endswith("_check"):
        column = constraint[len(table) + 1:-len("_check")]  # PostgreSQL's name for a column CHECK
    message = (getattr(diag, "message_primary", None) or str(original)).strip()
    detail = getattr(diag, "message_detail", None)
    if detail and detail.startswith("Failing row contains"):
        detail = None  # the row is named already
    field_name = next((n for n in row.cells if resolver_column(table, n) == column), column) if column else None
    where = row.cells[field_name].where if field_name in row.cells else row.where
    path = f"{table}.{row.label}" + (f".{field_name}" if field_name else "")
    return fail(where, path, message + (f" ({detail})" if detail else ""))


def _default(field_: peewee.Field) -> Any:
    default = field_.default
    return default() if callable(default) else default


def _diagnose(database: peewee.Database, statement: str, stage: str, specs: list[RowSpec], ids: list[str],
              table: str, error: Exception) -> None:
    """Find the first row the database refuses, and raise an error at its place in the file."""
    for row, row_id in zip(specs, ids, strict=True):
        try:
            with database.atomic():
                database.execute_sql(statement.replace(f'FROM "{stage}"', f'FROM "{stage}" WHERE id = %s', 1),
                                     (row_id,))
        except peewee.DatabaseError as exc:
            original = getattr(exc, "orig", None) or getattr(exc, "__cause__", None)
            raise _database_error(original, table, row) from None
    first = str(error).strip().splitlines()[0]
    raise fail(None, table, first) from None


def resolver_column(table: str, name: str) -> str:
    """The column name of field `name` in `table`."""
    return models_by_name()[table]._meta.fields[name].column_name


def dump_value(value: Any) -> Any:
    """A column value as plain YAML data."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes | memoryview):
        return base64.b64encode(bytes(value)).decode()
    return value


# -- dump -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _EmbeddingRow:
    file: str
    row: int


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(
    _EmbeddingRow, lambda dumper, e: dumper.represent_mapping("!embedding", {"file": e.file, "row": e.row}, True)
)


def dump(tables: list[str], out: Path, database: peewee.Database | None = None) -> int:
    """Write the rows of `tables` as a fixture file that loads back to the same data; return the row count.

    Vectors go to `.npy` files beside `out`; references between dumped rows become `@table.label`.
    """
    if database is None:
        from kit.db import database
    from kit.models import ALL_MODELS

    models = models_by_name()
    unknown = [t for t in tables if t not in models]
    if unknown:
        raise FixtureError(f"--dump: unknown table(s) {', '.join(unknown)}")
    wanted = {models[t]._meta.table_name for t in tables}
    ordered = [m for m in peewee.sort_models(ALL_MODELS) if m._meta.table_name in wanted]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows_by_table = {m: list(m.select().order_by(m.id).bind(database)) for m in ordered}
    labels = {m._meta.table_name: {row.id: f"r{i + 1}" for i, row in enumerate(rows)}
              for m, rows in rows_by_table.items()}
    document: dict[str, Any] = {}
    count = 0
    for model, rows in rows_by_table.items():
        table = model._meta.table_name
        entries: dict[str, Any] = {}
        vectors: dict[str, list] = {}
        for row in rows:
            entry: dict[str, Any] = {}
            for field_ in model._meta.sorted_fields:
                value = row.__data__.get(field_.name)
                if isinstance(field_, ForeignKeyField) and value is not None:
                    target = field_.rel_model._meta.table_name
                    label = labels.get(target, {}).get(value)
                    value = f"@{target}.{label}" if label else str(value)
                elif isinstance(field_, VectorField) and value is not None:
                    vectors.setdefault(field_.name, []).append(value)
                    name = f"{out.stem}.{table}.{field_.name}.npy"
                    value = _EmbeddingRow(name, len(vectors[field_.name]) - 1)
                elif isinstance(value, str) and value.startswith("@"):
                    value = "@" + value
                else:
                    value = dump_value(value)
                entry[field_.name] = value
            entries[labels[table][row.id]] = entry
            count += 1
        for column, values in vectors.items():
            np.save(out.parent / f"{out.stem}.{table}.{column}.npy", np.stack(values))
        document[table] = entries
    header = f"# Dumped by `python -m kit.seed --dump {','.join(tables)}`; loads back to the same rows.\n"
    out.write_text(header + yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return count
