"""The errors the kit raises about settings, connections and the pool, in one place.

Every one derives from `KitError`: an error the kit reports to a person as one clear sentence, so a
caller (and the kit's own commands) can catch "anything the kit refused" in one clause. Connection
errors also derive from the peewee class code already catches (`OperationalError`, `ValueError`).
"""

from __future__ import annotations

from peewee import OperationalError
from playhouse.pool import MaxConnectionsExceeded


class KitError(Exception):
    """An error the kit reports to a person as one clear sentence (no traceback)."""


class ConfigError(KitError):
    """A setting in the environment is missing, malformed or inconsistent."""


class PoolSettingError(KitError, ValueError):
    """A pool argument is out of range (a negative size, MIN above MAX, a timeout that is not a number)."""


class PoolExhausted(KitError, MaxConnectionsExceeded):
    """Every connection stayed checked out for the whole wait (peewee's `MaxConnectionsExceeded`)."""


class PoolTooLarge(KitError):
    """`min_size` is more connections than the server allows this role."""


class DatabaseUnavailable(KitError, OperationalError):
    """The database could not be reached; the message names the (password-masked) URL."""


class SessionLost(KitError, OperationalError):
    """The server ended a connection that held session state; the message names what was lost."""


class CopyRowError(KitError, ValueError):
    """A row given to binary COPY cannot be written; the message names the row index and the column."""
