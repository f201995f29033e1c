"""Observability: what the kit tells an operator about its statements, pools and commands.

- `tags`: `tag(route=..., job=...)`, what the current context is doing, and the sqlcommenter comment.
- `sql`: a statement's operation and low-cardinality summary (`SELECT organization`), never a value.
- `watch`: what happens around each statement when something observes (spans, the duration metric,
  the slow-query log, query tags), and `operation()` spans around the kit's own commands.
- `otel`: `KitInstrumentor`, OpenTelemetry's instrumentor for the kit (the `otel` extra; imported
  only by whoever instruments, so the kit runs without OpenTelemetry installed).

Leaked connections are reported by the pool itself (`kit.pool`, `leak_after`). The long form, with a
trace of one request, is docs/observability.md.
"""

from kit.telemetry.tags import labels, tag
from kit.telemetry.watch import operation

__all__ = ["labels", "operation", "tag"]
