"""Reading vectors in binary on any peewee model: the outermost SELECT list asks for `vector_send(col)`.

psycopg2 speaks PostgreSQL's text protocol, where a 1536-d vector arrives as ~19 KB of decimals to
parse. A vector field (`BinaryRead`) placed directly in the outermost SELECT list, bare or aliased,
renders as `vector_send(col)` (`halfvec_send`, `sparsevec_send`) instead: ~6 KB of bytea that numpy
reads without parsing. Everywhere else (WHERE, ORDER BY, functions, casts, subqueries, CTEs, UNION
parts, INSERT ... SELECT, RETURNING) the plain column is kept, so SQL that consumes the values gets
vectors. This works on a plain `peewee.Model` with any database; no special base class is needed.
"""

from __future__ import annotations

from typing import Any

from peewee import SCOPE_SOURCE, Function, Model

from kit.db.shapes import renders_by_place

# Depth of the scope stack at the items of the outermost SELECT list: the parse, the SELECT, its list.
# tests/test_vector_field.py renders every kind of query peewee builds to keep this honest.
OUTERMOST_PROJECTION_DEPTH = 3


def starts_outermost_projection_item(ctx: Any) -> bool:
    """Whether a node rendered now is an item (or an aliased item) of the outermost SELECT list."""
    state = ctx.state
    if (ctx.scope != SCOPE_SOURCE or not state.in_projection or state.in_function or state.in_expr
            or len(ctx.stack) != OUTERMOST_PROJECTION_DEPTH):
        return False
    # Wrappers that push no scope (Alias, Cast) share the depth: an item starts after "SELECT ",
    # "DISTINCT " or ", "; a cast after "CAST(".
    return not ctx._sql or ctx._sql[-1].endswith(" ")


class BinaryRead:
    """A field read in binary (its `send_function`) when it is an item of the outermost SELECT list."""

    send_function = ""
    column: Any

    def __sql__(self, ctx: Any) -> Any:
        """The column, or `send_function(column)` as an item of the outermost SELECT list."""
        if self.send_function and starts_outermost_projection_item(ctx):
            return ctx.sql(Function(self.send_function, (self.column,)))
        return ctx.sql(self.column)


renders_by_place(BinaryRead.__sql__)  # the statement cache may walk vector fields as plain ones (`kit.db.shapes`)


class VectorModel(Model):
    """A peewee model (kept for code written against earlier versions: every model now reads vectors in binary)."""


__all__ = ["BinaryRead", "VectorModel", "starts_outermost_projection_item"]
