"""The tenant context: which organization the statements of this thread or task are confined to.

    with kit.tenant(org):            # the row or its id; also a decorator; thread- and task-local
        Document.select()            # this organization's rows only, enforced by the database
    with kit.all_tenants():          # the one door past it: kit_door's connection (webhooks, reports)
        Customer.get(Customer.provider_customer_id == found)

Every table that holds an organization's data has row-level security keyed on the transaction-local
setting `kit.tenant` (`kit.roles` writes the policies from `Meta.tenant`). Inside `tenant(org)`, every
statement the kit's pool sends carries `set_config('kit.tenant', <id>, true)` in the same round trip
(`statement_prefix`): outside a transaction it lives and dies with the statement's own implicit
transaction; inside one the pool sends it with each statement of a transaction that has carried a
tenant. So nothing outlives a transaction, and a connection (or a PgBouncer server connection) handed
to the next caller carries no tenant. Without a context the setting is empty and the policies match
no row: reads find nothing, writes are refused (`TenantRequired`, one sentence).

**The tenant is bound to its transaction.** Beside it rides that transaction's start time
(`kit.tenant_xact`), and the policies accept the tenant only while the two agree (`kit.roles.TENANT`).
A value planted for the session by any spelling (`set_config(..., false)`, `SET kit.tenant`, a
function that does either) names the planter's transaction, never a later one: it matches no row in
the next request, whatever connection or pooler carries it.

**Contexts cannot cross.** A block's state lives in the context, not on the `tenant(...)` object, so
one decorator shared by threads and tasks keeps each apart; a block left in another context than the
one it entered (a FastAPI `def` dependency with `yield`) is refused in one sentence. Inside
`tenant(a)`, `tenant(b)` raises `TenantError` unless `switch=True` says it is meant, which is also what
a kit operation given another organization than the context's raises. `tenant(org)` inside
`all_tenants()` confines its block again; a query object's remembered rows are served only to the
context they were read in (`kit.models.base`).

`all_tenants()` does not flip a setting: the database routes the block's statements to the door's
connection (DATABASE_DOOR_URL, `kit_door`: the application's privileges and BYPASSRLS, nothing more),
so code that merely forgets `tenant()` never passes through it, and the run-time role has no way to.
"""

from __future__ import annotations

import uuid
import weakref
from contextlib import ContextDecorator, suppress
from contextvars import ContextVar
from typing import Any, Literal, NamedTuple, overload

from peewee import Delete, Insert, Update

from kit.errors import ArgumentError, TenantError, TenantRequired

SETTING = "kit.tenant"  # the transaction-local setting the policies read
BOUND = "kit.tenant_xact"  # the transaction it was set for: the policies accept SETTING only in that transaction


@overload
def id_of(value: Any, what: str = ..., optional: Literal[False] = ...) -> uuid.UUID: ...
@overload
def id_of(value: Any, what: str = ..., optional: bool = ...) -> uuid.UUID | None: ...
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


class _Frame(NamedTuple):
    """One entered block: the tenant and door in force inside it, who entered it, and the frame around it."""

    tenant: uuid.UUID | None
    door: bool
    entered_by: object
    outer: _Frame | None


_frame: ContextVar[_Frame | None] = ContextVar("kit_tenant_context", default=None)


class _Scoped(ContextDecorator):
    """A block that sets the tenant context on entry and restores it on exit.

    Its state lives in the context (`_frame`), never on the object: one `kit.tenant(org)` used as a
    decorator or shared by threads and tasks at once keeps each caller's context apart, and a block left
    in another context than the one it was entered in (a FastAPI `def` dependency with `yield` runs its
    two halves on two threads) is refused in one sentence instead of leaving a tenant behind.
    """

    def __init__(self, tenant: uuid.UUID | None, door: bool) -> None:
        self._tenant, self._door = tenant, door

    def __enter__(self) -> _Scoped:
        outer = _frame.get()
        _frame.set(_Frame(self._inner_tenant(outer), self._door, self, outer))
        return self

    def _inner_tenant(self, outer: _Frame | None) -> uuid.UUID | None:
        return self._tenant

    def __exit__(self, *exc: object) -> None:
        frame = _frame.get()
        if frame is None or frame.entered_by is not self:
            raise TenantError(f"{self._name()} was left in a different context from the one that entered it, so "
                              "it confined nothing there (a FastAPI `def` dependency with `yield` runs its two "
                              "halves on two threads): use an `async def` dependency, or the block inside the "
                              "endpoint")
        _frame.set(frame.outer)

    def _name(self) -> str:
        return f"kit.tenant({self._tenant})"


class _Tenant(_Scoped):
    """`tenant(org)`: confined to one organization; another one nested inside it only when said (`switch`)."""

    def __init__(self, organization: uuid.UUID, switch: bool) -> None:
        super().__init__(organization, False)
        self._switch = switch

    def _inner_tenant(self, outer: _Frame | None) -> uuid.UUID | None:
        if outer is not None and outer.tenant is not None and outer.tenant != self._tenant \
                and not outer.door and not self._switch:
            raise TenantError(f"organization {self._tenant} was given inside kit.tenant({outer.tenant}), the "
                              "context of another organization; nothing was sent (to change the tenant on "
                              "purpose: kit.tenant(org, switch=True))")
        return self._tenant


def tenant(organization: Any, *, switch: bool = False) -> _Scoped:
    """Confine every statement of the block (or decorated function) to `organization` (the row or its id).

    Inside another organization's block it raises `TenantError` unless `switch=True` says it is meant;
    inside `all_tenants()` it confines the block again.
    """
    return _Tenant(id_of(organization, "tenant"), switch)


class _AllTenants(_Scoped):
    """`all_tenants()`: on leaving the outermost block, each database gives back the connection it lent."""

    def _inner_tenant(self, outer: _Frame | None) -> uuid.UUID | None:
        return outer.tenant if outer is not None else None

    def _name(self) -> str:
        return "kit.all_tenants()"

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        if not crossing_tenants():
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
    """Within the block, every statement goes to the door's connection (`kit_door`), past row-level security."""
    return _AllTenants(None, True)


def current_tenant() -> uuid.UUID | None:
    """The organization this context is confined to, or None."""
    frame = _frame.get()
    return frame.tenant if frame is not None else None


def context_key() -> tuple[uuid.UUID | None, bool]:
    """What tells one tenant context from another: (tenant, inside the door)."""
    frame = _frame.get()
    return (frame.tenant, frame.door) if frame is not None else (None, False)


def crossing_tenants() -> bool:
    """True inside `all_tenants()` (and not inside a `tenant(org)` within it)."""
    frame = _frame.get()
    return frame is not None and frame.door


def statement_prefix(value: uuid.UUID | None) -> str:
    """The SQL sent before a statement so that it runs as `value`'s tenant ('' clears the setting).

    The tenant is bound to the transaction it is sent in: beside it rides that transaction's start
    time, and the policies (`kit.roles.TENANT`) accept the tenant only while the two agree. A value
    planted at session level by any spelling (`set_config(..., false)`, `SET kit.tenant`, a function)
    names another transaction's time in every later one, so it matches no row there.
    """
    text = str(value) if value is not None else ""  # a UUID's text: nothing in it needs quoting
    return (f"SELECT set_config('{SETTING}', '{text}', true), "
            f"set_config('{BOUND}', {TRANSACTION_STAMP}, true);")


# The current transaction's start, as text: the same for every statement of one transaction, and never
# the same for two transactions of one session (a new one starts with a new statement's timestamp, in µs).
TRANSACTION_STAMP = "extract(epoch FROM transaction_timestamp())::text"


def require_tenant(query: Any) -> None:
    """Raise TenantRequired for a write the tenant table's policies would refuse (or, for UPDATE/DELETE, skip)."""
    meta = getattr(getattr(query, "model", None), "_meta", None)
    name = getattr(meta, "tenant", None)
    if meta is None or not name or not isinstance(query, (Insert, Update, Delete)):
        return
    command = {Insert: "insert", Update: "update", Delete: "delete"}[next(
        kind for kind in (Insert, Update, Delete) if isinstance(query, kind))]
    if command in meta.tenant_open or (command == "insert" and meta.fields[name].null):
        return  # open to every context, or a row of no organization may be allowed (the policy decides)
    raise TenantRequired(f"{meta.table_name}: {command.upper()} of an organization's rows needs a tenant context "
                         "(with kit.tenant(org): ...), and none is set; nothing was sent")
