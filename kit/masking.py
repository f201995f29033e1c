"""Passwords out of text: a URL, a DSN or a message holding one, with every password replaced by `***`.

Its own module, below both `kit.config` (which reads URLs) and `kit.errors` (whose `describe` masks
every message), so that neither imports the other for it.
"""

from __future__ import annotations

import re
from urllib.parse import quote

import psycopg2.extensions

_PASSWORD_PARAM = re.compile(r"(?P<head>\b(?:ssl)?password\s*=\s*)(?:'(?:[^'\\]|\\.)*'?|[^\s&]*)", re.IGNORECASE)
_USERINFO = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^\s:/@]*:)[^\s]*@", re.IGNORECASE)


def mask_password(text: str) -> str:
    """`text` (a URL, a key=value DSN, or a message holding one) with every password replaced by `***`.

    Masked in every spelling: the password libpq would use, raw and percent-encoded, wherever it
    appears; the userinfo of a URL up to its last `@` (so `@`, `:` and `/` in a password stay hidden);
    and `password=` in a query string or a key=value DSN, quoted or not.
    """
    for found in _libpq_passwords(text):
        if len(found) >= 4:  # shorter ones would garble the text; the patterns below still hide them
            for spelling in {found, quote(found, safe=""), quote(found)}:
                text = text.replace(spelling, "***")
    text = _USERINFO.sub(lambda m: m["head"] + "***@", text)
    return _PASSWORD_PARAM.sub(lambda m: m["head"] + "***", text)


def _libpq_passwords(dsn: str) -> list[str]:
    try:
        found = psycopg2.extensions.parse_dsn(dsn.strip())
    except (psycopg2.ProgrammingError, ValueError):
        return []
    return [found[key] for key in ("password", "sslpassword") if found.get(key)]


__all__ = ["mask_password"]
