"""What a statement leaves on its connection: session state by kind, and what a transaction pooler refuses.

`session_change(sql)` classifies one statement cheaply (a prefix match and a few substring tests, even
for long SQL) into one of the kinds below, or None. The pooled database records the kinds a
connection holds (so a lost connection names what was lost) and, behind PgBouncer, refuses the kinds
that would outlive the transaction (`POOLER_REFUSES`, with what to use instead).
"""

from __future__ import annotations

import re
from functools import lru_cache

# Statements that leave session state behind, by what they leave. SET LOCAL, SET TRANSACTION,
# SET CONSTRAINTS and pg_advisory_xact_lock end with the transaction.
_SESSION_STATEMENTS = [
    (re.compile(r"\s*(?:set\s+(?!local\b|transaction\b|constraints\b)|reset\b)", re.I), "settings (SET)"),
    (re.compile(r"\s*listen\b", re.I), "LISTEN registrations"),
    (re.compile(r"\s*prepare\b", re.I), "prepared statements"),
    (re.compile(r"\s*declare\b", re.I), "cursors"),
    (re.compile(r"\s*create\s+(?:(?:global|local)\s+)?temp", re.I), "temporary tables"),
    (re.compile(r"\s*load\b", re.I), "loaded libraries"),
]
_SESSION_STATEMENT = re.compile(
    r"\s*(?:set|reset|listen|prepare|declare|create|load|begin|start|commit|end|rollback|abort)\b", re.I)
_RAW_BEGIN = re.compile(r"\s*(?:begin|start\s+transaction)\b", re.I)
_RAW_END = re.compile(r"\s*(?:commit|end|abort|rollback(?!\s+to\b))\b(?!\s+prepared)", re.I)
RAW_BEGIN, RAW_END = "BEGIN", "END"  # what session_change returns for transaction control sent as SQL
OPEN_TRANSACTION = "an open transaction (nothing of it was committed)"
_SESSION_FUNCTIONS = [("advisory_lock", "advisory locks"), ("ADVISORY_LOCK", "advisory locks"),
                      ("set_config", "settings (set_config)"), ("SET_CONFIG", "settings (set_config)")]
DRIVER_USE = "whatever was done on the driver connection directly"
# What a statement leaves on a server connection that a transaction-pooling PgBouncer shares with other
# clients once the transaction ends (cursors end with it; set_config may be local, so it is let through).
POOLER_REFUSES = {"settings (SET)": "SET LOCAL inside database.atomic()",
                  "LISTEN registrations": "a direct connection to the server for LISTEN",
                  "prepared statements": "plain statements",
                  "temporary tables": "CREATE TEMP TABLE ... ON COMMIT DROP inside database.atomic()",
                  "loaded libraries": "a direct connection to the server",
                  "advisory locks": "pg_advisory_xact_lock inside database.atomic()"}
# Statements PostgreSQL runs only outside a transaction block: no setting rides before them.
NO_TRANSACTION_BLOCK = re.compile(r"\s*(?:vacuum|discard\s+all|create\s+database|drop\s+database|alter\s+system|"
                                  r"(?:create|drop)\s+tablespace|reindex\s+(?:system|database)|"
                                  r"(?:create\s+(?:unique\s+)?|drop\s+|reindex\s+)\S*\s*(?:index\s+)?concurrently)\b",
                                  re.I)


def session_change(sql: str) -> str | None:
    """What session state `sql` may leave behind (e.g. "advisory locks"), or None (cheap even for long SQL)."""
    return _session_change(sql) if len(sql) <= CACHED_UP_TO else _classify(sql)


CACHED_UP_TO = 4096  # characters: a statement the models repeat is remembered; a bulk one is not kept in memory


@lru_cache(maxsize=1024)
def _session_change(sql: str) -> str | None:
    return _classify(sql)


def _classify(sql: str) -> str | None:
    if _SESSION_STATEMENT.match(sql) is not None:
        if _RAW_BEGIN.match(sql):
            return RAW_BEGIN
        if _RAW_END.match(sql):
            return RAW_END
        for pattern, kind in _SESSION_STATEMENTS:
            if pattern.match(sql):
                return kind
    for needle, kind in _SESSION_FUNCTIONS:
        if needle in sql:
            return kind
    return None
