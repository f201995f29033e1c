"""kit: a Peewee data layer for SaaS backends on PostgreSQL and pgvector.

Importing the package never connects; the first query does (see `kit.db`). Every error the kit
raises on purpose is a `kit.KitError` (its family is in `kit.errors`, all exported here), so
`except KitError` catches anything the kit refused.

`kit.tenant(org)` sets the organization every statement of the block is confined to (row-level
security, `kit.tenancy`); `kit.all_tenants()` is the one door past it (`kit_door`'s connection).
"""

from collections.abc import Callable
from typing import Any, TypeVar

from kit.errors import (
    ArgumentError,
    ArgumentTypeError,
    ConfigError,
    CopyRowError,
    DatabaseUnavailable,
    DecryptionError,
    EmbeddedServerError,
    FixtureError,
    InsufficientCredits,
    InvitationError,
    InvitationNotFound,
    KitError,
    LockBusy,
    LockHeld,
    MigrationError,
    NotCitus,
    NotFound,
    NotMigrated,
    PlacementRefused,
    PoolExhausted,
    PoolSettingError,
    PoolTooLarge,
    SessionLost,
    SessionStateRefused,
    StatementTimeout,
    TenantError,
    TenantRequired,
    VectorValueError,
)
from kit.tenancy import all_tenants, current_tenant, tenant

__version__ = "0.1.0"
T = TypeVar("T")


def retry_transaction(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run `fn` in one transaction, again on the failures after which nothing was committed (`kit.db.retry`)."""
    from kit.db.retry import retry_transaction as run

    return run(fn, *args, **kwargs)

__all__ = ["ArgumentError", "ArgumentTypeError", "ConfigError", "CopyRowError", "DatabaseUnavailable",
           "DecryptionError", "EmbeddedServerError", "FixtureError", "InsufficientCredits", "InvitationError",
           "InvitationNotFound", "KitError", "LockBusy", "LockHeld", "MigrationError", "NotCitus", "NotFound",
           "NotMigrated", "PlacementRefused", "PoolExhausted", "PoolSettingError", "PoolTooLarge", "SessionLost",
           "SessionStateRefused", "StatementTimeout", "TenantError", "TenantRequired", "VectorValueError",
           "all_tenants", "current_tenant", "retry_transaction", "tenant"]
