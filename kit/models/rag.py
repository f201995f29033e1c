"""RAG: document sources and their chunks with pgvector embeddings (1536-d, OpenAI text-embedding-3-small)."""

from __future__ import annotations

from typing import Any

from peewee import Check, ForeignKeyField, IntegerField, TextField
from playhouse.postgres_ext import BinaryJSONField

from kit.models.auth import Organization, User
from kit.models.base import TimestampedModel, id_of, one_of
from kit.vector import HNSWIndex, VectorField, nearest

EMBEDDING_DIMENSIONS = 1536
SOURCE_KINDS = ("upload", "url", "text", "integration")
SOURCE_STATUSES = ("pending", "processing", "ready", "failed")


class DocumentSource(TimestampedModel):
    """A document an organization added for retrieval: a file, a page, some text."""

    organization = ForeignKeyField(Organization, backref="document_sources", on_delete="CASCADE")
    created_by = ForeignKeyField(User, null=True, on_delete="SET NULL")
    title = TextField()
    kind = TextField(default="text", constraints=[one_of("kind", SOURCE_KINDS)])
    uri = TextField(null=True)
    status = TextField(default="pending", constraints=[one_of("status", SOURCE_STATUSES)])
    metadata = BinaryJSONField(index=False, default=dict)

    class Meta:
        table_name = "document_sources"


class DocumentChunk(TimestampedModel):
    """A passage of a source with its embedding; searched by similarity within one organization."""

    source = ForeignKeyField(DocumentSource, backref="chunks", on_delete="CASCADE")
    organization = ForeignKeyField(Organization, backref="document_chunks", on_delete="CASCADE")
    position = IntegerField(constraints=[Check("position >= 0")])
    content = TextField()
    token_count = IntegerField(default=0, constraints=[Check("token_count >= 0")])
    embedding = VectorField(EMBEDDING_DIMENSIONS, null=True)

    class Meta:
        table_name = "document_chunks"
        indexes = ((("source", "position"), True),)
        # A 1536-d embedding is 6 KB, over the 2 KB at which PostgreSQL moves values out of the row
        # (TOAST). Kept in the row: exact scans 2.5x, HNSW builds 2x faster (benchmarks/storage.py).
        table_settings = ["WITH (toast_tuple_target = 8160)"]

    @classmethod
    def search(cls, embedding: Any, organization: Any, k: int = 10, metric: str = "cosine",
               ef_search: int | None = None) -> list[DocumentChunk]:
        """The `k` chunks of `organization` nearest to `embedding`, nearest first, each with `.distance`."""
        org_id = id_of(organization)
        query = cls.select().where((cls.organization == org_id) & cls.embedding.is_null(False))
        return nearest(query, cls.embedding, embedding, k=k, metric=metric, ef_search=ef_search)


DocumentChunk.add_index(HNSWIndex(DocumentChunk.embedding, metric="cosine", m=16, ef_construction=64))
