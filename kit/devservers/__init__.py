"""Development servers beside the embedded one, for trying and testing what production runs: not run-time code.

- `replica`: `kit db replica start|stop`, a streaming replica of the embedded server.
- `pgbouncer`: `kit db pgbouncer start|stop`, a real PgBouncer in transaction mode in front of it.
- `citus`: `kit db citus start|stop|status`, a Citus coordinator and two workers on its binaries, Citus
  built once from a source tarball.

The run-time side of each is elsewhere: read routing in `kit.db.reads` and `kit.routing`, the
PgBouncer rules in `kit.db.statements` and `kit.db.pooled`.
"""
