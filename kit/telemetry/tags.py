"""Query tags: the route or job a context serves, and the sqlcommenter comment a statement carries them in.

`kit.telemetry.tag(route="GET /orgs/{org_id}")` names what the current context (thread or asyncio
task, and those it starts) is doing; `kit.web.install(app)` sets the route for every request. The
slow-query log and the spans carry it always; the SQL comment only when query tags are on
(DATABASE_QUERY_TAGS=1). The comment is sqlcommenter's format: `key='value'` pairs, sorted, each
value URL-encoded, so nothing a caller names can end the comment or the statement.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from urllib.parse import quote

_labels: ContextVar[tuple[tuple[str, str], ...]] = ContextVar("kit_labels", default=())
MAX_LABEL = 200  # characters of a route or job name kept: a label is a name, not a payload


@contextmanager
def tag(*, route: str | None = None, job: str | None = None) -> Iterator[None]:
    """Within the block, this context's statements are tagged with `route` (a web route) or `job` (a task)."""
    given = {name: str(value)[:MAX_LABEL] for name, value in (("route", route), ("job", job)) if value}
    token = _labels.set(tuple(sorted({**dict(_labels.get()), **given}.items())))
    try:
        yield
    finally:
        _labels.reset(token)


def labels() -> dict[str, str]:
    """The route and job the current context is tagged with (empty when none)."""
    return dict(_labels.get())


def tagged_now() -> tuple[tuple[str, str], ...]:
    """The current context's tags as (name, value) pairs (no copy: the cheap form, per statement)."""
    return _labels.get()


def comment(pairs: dict[str, str]) -> str:
    """The sqlcommenter comment for `pairs` (' /*key='value',...*/'; '' for none), with % doubled for the driver."""
    if not pairs:
        return ""
    body = ",".join(f"{quote(key, safe='')}='{quote(value, safe='')}'" for key, value in sorted(pairs.items()))
    return f" /*{body}*/".replace("%", "%%")
