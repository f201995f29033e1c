"""The tenant context: which organization the statements of this thread or task are confined to.

    with kit.tenant(org):            # the row or its id; also a decorator; nests; thread- and task-local
        Document.select()            # this organization's rows only, enforced by the database
    with kit.all_tenants():          # the one door past it: the owner's connection (billing webhooks, reports)
        Customer.get(Customer.provider_customer_id == found)

Every table that holds an organization's data has row-level security keyed on the transaction-local
setting `kit.tenant` (`kit.roles` writes the policies from `Meta.tenant`). Inside `tenant(org)`, every
statement the kit's pool sends carries `set_config('kit.tenant', <id>, true)` in the same round trip
(`statement_prefix`): outside a transaction it lives and dies with the statement's own implicit
transaction, inside one it is sent again only when the context's tenant differs from the one already
set in that transaction. So nothing outlives a transaction, and a connection (or a PgBouncer server
connection) handed to the next caller carries no tenant. Without a context the setting is empty and
the policies match no row: reads find nothing, writes are refused (`TenantRequired`, one sentence).

`all_tenants()` does not flip a setting: the database routes the block's statements to the owner's
connection (DATABASE_OWNER_URL, a role that bypasses row-level security), so code that merely forgets
`tenant()` never passes through it, and the run-time role has no way to.
"""

from __future__ import annotations

import uuid
import weakref
from contextlib import ContextDecorator, suppress
from contextvars import ContextVar, Token
from typing import Any

from peewee import Delete, Insert, Update

from kit.errors import ArgumentError, TenantRequired

SETTING = "kit.tenant"  # the transaction-local setting the policies read
_tenant: ContextVar[uuid.UUID | None] = ContextVar("kit_tenant", default=None)
_door: ContextVar[bool] = ContextVar("kit_all_tenants", default=False)


def id_of(value: Any, what: str = "organization", optional: bool = False) -> uuid.UUID | None:
    """The id of a row given as a model instance or its id (a UUID or UUID text); one sentence otherwise."""
    if value is None and optional:
        return None
    found = getattr(value, "id", value)
    if isinstance(found, uuid.UUID):
        return found
    if isinstance(found, str):
        try:
            return uuid.UUID(found)
        except ValueError:
            pass
    shown = repr(value)[:60]
    raise ArgumentError(f"{what}: expected the row (a model instance) or its id (a UUID), "
                        f"got {type(value).__name__} {shown}")


class _Scoped(ContextDecorator):
    """A context that sets a context variable on entry and restores it on exit (re-entrant, nestable)."""

    def __init__(self, variable: ContextVar[Any], value: Any) -> None:
        self._variable, self._value = variable, value
        self._tokens: list[Token[Any]] = []

    def __enter__(self) -> _Scoped:
        self._tokens.append(self._variable.set(self._value))
        return self

    def __exit__(self, *exc: object) -> None:
        self._variable.reset(self._tokens.pop())


def tenant(organization: Any) -> _Scoped:
    """Confine every statement of the block (or decorated function) to `organization` (the row or its id)."""
    return _Scoped(_tenant, id_of(organization, "tenant"))


class _AllTenants(_Scoped):
    """`all_tenants()`: on leaving the outermost block, each database gives back the connection it lent."""

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        if not _door.get():
            for hook in list(_on_leave):
                release = hook()
                if release is not None:
                    release()
                    continue
                with suppress(ValueError):  # its database is gone: forget the hook
                    _on_leave.remove(hook)


_on_leave: list[weakref.WeakMethod[Any]] = []


def on_leaving_all_tenants(release: Any) -> None:
    """Call `release` (a bound method, held weakly) whenever a context leaves its outermost `all_tenants()`."""
    _on_leave.append(weakref.WeakMethod(release))


def all_tenants() -> _Scoped:
    """Within the block, every statement goes to the owner's connection, past row-level security."""
    return _AllTenants(_door, True)


def current_tenant() -> uuid.UUID | None:
    """The organization this context is confined to, or None."""
    return _tenant.get()


def crossing_tenants() -> bool:
    """True inside `all_tenants()`."""
    return _door.get()


def statement_prefix(value: uuid.UUID | None) -> str:
    """The SQL sent before a statement so that it runs as `value`'s tenant ('' clears the setting)."""
    text = str(value) if value is not None else ""  # a UUID's text: nothing in it needs quoting
    return f"SELECT set_config('{SETTING}', '{text}', true);"


def require_tenant(query: Any) -> None:
    """Raise TenantRequired for a write the tenant table's policies would refuse (or, for UPDATE/DELETE, skip)."""
    meta = getattr(getattr(query, "model", None), "_meta", None)
    name = getattr(meta, "tenant", None)
    if not name or not isinstance(query, (Insert, Update, Delete)):
        return
    command = {Insert: "insert", Update: "update", Delete: "delete"}[next(
        kind for kind in (Insert, Update, Delete) if isinstance(query, kind))]
    if command in meta.tenant_open or (command == "insert" and meta.fields[name].null):
        return  # open to every context, or a row of no organization may be allowed (the policy decides)
    raise TenantRequired(f"{meta.table_name}: {command.upper()} of an organization's rows needs a tenant context "
                         "(with kit.tenant(org): ...), and none is set; nothing was sent")
