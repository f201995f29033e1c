"""What a statement is, in few words: its operation and a low-cardinality summary (`SELECT organization`).

OpenTelemetry's database conventions name a span by its query summary, `{operation} {target}`, and
put the same words on the duration metric, so they must never carry a value: only the leading
keyword and the first table the statement names are read from the text, outside its literals and
comments, so a value never becomes a name. The
watch remembers the answer per text and server (`kit.telemetry.watch.shape_of`).
"""

from __future__ import annotations

import re

_LEADING = re.compile(r"\s*(?:/\*.*?\*/\s*|--[^\n]*\n\s*)*([A-Za-z]+)", re.S)
_NAME = r'((?:"[^"]+"|[A-Za-z_][\w$]*)(?:\.(?:"[^"]+"|[A-Za-z_][\w$]*))?)'
_TARGET = {
    "SELECT": re.compile(r"\bFROM\s+" + _NAME, re.I),
    "INSERT": re.compile(r"\bINTO\s+" + _NAME, re.I),
    "UPDATE": re.compile(r"\bUPDATE\s+(?:ONLY\s+)?" + _NAME, re.I),
    "DELETE": re.compile(r"\bFROM\s+(?:ONLY\s+)?" + _NAME, re.I),
    "COPY": re.compile(r"^\s*COPY\s+" + _NAME, re.I),
}
# What is never read for a name: literals (backslash-escaped ones too), dollar-quoted bodies, comments.
_NOT_NAMES = re.compile(r"[Ee]'(?:[^'\\]|\\.|'')*'|'(?:[^']|'')*'|\$(\w*)\$.*?\$\1\$|/\*.*?\*/|--[^\n]*", re.S)
_MAIN = re.compile(r"\)\s*(SELECT|INSERT|UPDATE|DELETE)\b", re.I)  # the statement after a WITH's last CTE
KEYWORDS = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "WITH", "BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT",
                      "RELEASE", "SET", "RESET", "SHOW", "COPY", "CREATE", "ALTER", "DROP", "TRUNCATE", "VACUUM",
                      "ANALYZE", "REINDEX", "CLUSTER", "LOCK", "LISTEN", "NOTIFY", "UNLISTEN", "PREPARE", "EXECUTE",
                      "DEALLOCATE", "DECLARE", "FETCH", "CLOSE", "DISCARD", "GRANT", "REVOKE", "COMMENT", "EXPLAIN",
                      "START", "END", "ABORT", "DO", "CALL", "REFRESH", "VALUES", "TABLE", "MERGE"})


def summarize(sql: str) -> tuple[str, str, str | None]:
    """(operation, summary, table) for one statement: `("SELECT", "SELECT organization", "organization")`."""
    found = _LEADING.match(sql)
    operation = found[1].upper() if found else ""
    if operation not in KEYWORDS:
        return "OTHER", "OTHER", None  # never echo an unknown word: it could be anything a caller sent
    start = 0
    sql = _NOT_NAMES.sub("''", sql)  # a literal saying "from secrets" names no table
    if operation == "WITH":
        mains = [*_MAIN.finditer(sql)]
        main = mains[-1] if mains else None
        operation, start = (main[1].upper(), main.start(1)) if main else ("SELECT", 0)
    pattern = _TARGET.get(operation)
    target = pattern.search(sql, start) if pattern else None
    table = target[1].replace('"', "") if target else None
    return operation, f"{operation} {table}" if table else operation, table
