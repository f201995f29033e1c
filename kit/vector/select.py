"""Reading vectors in binary: `VectorModel`, whose selects fetch vector columns with `vector_send`.

psycopg2 speaks PostgreSQL's text protocol, where a 1536-d vector arrives as ~19 KB of decimals to
parse. In the outermost SELECT of a `VectorModel` query, each selected vector column is rendered as
`vector_send(col) AS col` instead: ~6 KB of bytea that numpy reads without parsing. Subqueries, CTEs,
UNION parts and INSERT ... SELECT keep the plain column, so SQL that consumes the values gets vectors.
"""

from __future__ import annotations

from typing import Any

from peewee import SCOPE_COLUMN, CommaNodeList, Model, ModelSelect, fn

from kit.vector.fields import HalfVectorField, VectorField


def _binary(node: Any) -> Any:
    if isinstance(node, HalfVectorField):
        return fn.halfvec_send(node).alias(node.column_name)
    if isinstance(node, VectorField):
        return fn.vector_send(node).alias(node.column_name)
    return node


class BinaryVectorSelect(ModelSelect):
    """A model select that reads the vector columns of its outermost projection in binary."""

    def __sql__(self, ctx: Any) -> Any:
        """Render the query, marking itself as the outermost select when it is one."""
        # The root of the statement: nothing rendered around it (an INSERT, a UNION, a CTE, a subquery).
        outermost = not ctx.stack and ctx.scope != SCOPE_COLUMN and not ctx.subquery
        with ctx(kit_outermost_select=id(self) if outermost else None):
            return super().__sql__(ctx)

    def __sql_selection__(self, ctx: Any, is_subquery: bool = False) -> Any:
        """The SELECT list, vector columns wrapped in their binary send function at the outermost level."""
        if ctx.state.kit_outermost_select != id(self):
            return super().__sql_selection__(ctx, is_subquery)
        return ctx.sql(CommaNodeList([_binary(node) for node in self._returning]))


class VectorModel(Model):
    """A peewee model whose queries return vector columns read in binary (see the module docstring)."""

    @classmethod
    def select(cls, *fields: Any) -> BinaryVectorSelect:
        """Like `Model.select`, returning a `BinaryVectorSelect`."""
        is_default = not fields
        if not fields:
            fields = cls._meta.sorted_fields
        return BinaryVectorSelect(cls, fields, is_default=is_default)


__all__ = ["BinaryVectorSelect", "VectorModel"]
