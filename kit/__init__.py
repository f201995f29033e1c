"""kit: a Peewee data layer for SaaS backends on PostgreSQL and pgvector.

Importing the package never connects; the first query does (see `kit.db`). Every error the kit
raises on purpose is a `kit.KitError` (its family is in `kit.errors`, all exported here), so
`except KitError` catches anything the kit refused.
"""

from kit.errors import (
    ArgumentError,
    ConfigError,
    CopyRowError,
    DatabaseUnavailable,
    DecryptionError,
    EmbeddedServerError,
    FixtureError,
    InsufficientCredits,
    InvitationError,
    KitError,
    MigrationError,
    PoolExhausted,
    PoolSettingError,
    PoolTooLarge,
    SessionLost,
    SessionStateRefused,
    VectorValueError,
)

__version__ = "0.1.0"

__all__ = ["ArgumentError", "ConfigError", "CopyRowError", "DatabaseUnavailable", "DecryptionError",
           "EmbeddedServerError", "FixtureError", "InsufficientCredits", "InvitationError", "KitError",
           "MigrationError", "PoolExhausted", "PoolSettingError", "PoolTooLarge", "SessionLost", "SessionStateRefused",
           "VectorValueError"]
