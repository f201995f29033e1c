"""RAG: document sources and their chunks with pgvector embeddings (1536-d, OpenAI text-embedding-3-small)."""

from __future__ import annotations

import re
from typing import Any

from peewee import Check, ForeignKeyField, IntegerField, TextField
from playhouse.postgres_ext import BinaryJSONField

from kit.db.contract import riding
from kit.errors import ArgumentError
from kit.models.auth import Organization, User
from kit.models.base import GeneratedTSVectorField, TimestampedModel, id_of, is_generated, one_of
from kit.tenancy import tenant
from kit.vector import HNSWIndex, VectorField, nearest
from kit.vector.search import MAX_K, bounded, plan_search, plan_settings, read_sql, search_limit

EMBEDDING_DIMENSIONS = 1536
SOURCE_KINDS = ("upload", "url", "text", "integration")
SOURCE_STATUSES = ("pending", "processing", "ready", "failed")
# PostgreSQL's built-in text search configurations: a chunk's `language` picks how its words are stemmed.
TEXT_SEARCH_LANGUAGES = (
    "simple", "arabic", "armenian", "basque", "catalan", "danish", "dutch", "english", "finnish", "french",
    "german", "greek", "hindi", "hungarian", "indonesian", "irish", "italian", "lithuanian", "nepali",
    "norwegian", "portuguese", "romanian", "russian", "serbian", "spanish", "swedish", "tamil", "turkish",
    "yiddish",
)
# A generated column may only use immutable expressions: text::regconfig is not, a CASE of constants is.
SEARCH_TEXT_SQL = ("to_tsvector(CASE language "
                   + " ".join(f"WHEN '{name}' THEN '{name}'::regconfig" for name in TEXT_SEARCH_LANGUAGES)
                   + " END, content)")
# The keyword side's input is bounded before any SQL: websearch_to_tsquery's parse and the match grow
# with the query's terms (9 KB of negated words held a backend 5 s and 300 MiB; 36 KB failed to
# allocate), and what a person types into a search box is a few words.
MAX_QUERY_CHARS = 1_000
MAX_QUERY_WORDS = 64
WORD = re.compile(r"\w+")
RRF_K = 60  # reciprocal rank fusion's constant: score = sum of 1 / (RRF_K + rank) over the rankings


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
        tenant = "organization"


class DocumentChunk(TimestampedModel):
    """A passage of a source with its embedding; searched by similarity within one organization."""

    source = ForeignKeyField(DocumentSource, backref="chunks", on_delete="CASCADE")
    organization = ForeignKeyField(Organization, backref="document_chunks", on_delete="CASCADE")
    position = IntegerField(constraints=[Check("position >= 0")])
    content = TextField()
    token_count = IntegerField(default=0, constraints=[Check("token_count >= 0")])
    embedding = VectorField(EMBEDDING_DIMENSIONS, null=True)
    language = TextField(default="english", constraints=[one_of("language", TEXT_SEARCH_LANGUAGES)])
    search_text = GeneratedTSVectorField(SEARCH_TEXT_SQL)  # the content's words, for keyword search (GIN)

    class Meta:
        table_name = "document_chunks"
        tenant = "organization"
        indexes = ((("organization", "source", "position"), True),)  # through the organization (migration 012)
        tenant_index = "organization"  # `kit maintain` gives each big organization an HNSW graph of its own
        # A 1536-d embedding is 6 KB, over the 2 KB at which PostgreSQL moves values out of the row
        # (TOAST). Kept in the row: exact scans 2.5x, HNSW builds 2x faster (benchmarks/storage.py).
        table_settings = ["WITH (toast_tuple_target = 8160)"]

    @classmethod
    def search(cls, embedding: Any, organization: Any, k: int = 10, metric: str = "cosine",
               ef_search: int | None = None) -> list[DocumentChunk]:
        """The `k` chunks of `organization` nearest to `embedding`, nearest first, each with `.distance`."""
        org_id = id_of(organization)
        query = cls.select().where((cls.organization == org_id) & cls.embedding.is_null(False))
        with tenant(org_id):
            return nearest(query, cls.embedding, embedding, k=k, metric=metric, ef_search=ef_search)


    @classmethod
    def hybrid_search(cls, text: str, embedding: Any, organization: Any, k: int = 10, language: str = "english",
                      candidates: int | None = None) -> list[DocumentChunk]:
        """The `k` chunks of `organization` best matching both `text` (keywords) and `embedding`, best first.

        One statement: the `candidates` nearest chunks (planned as `search` plans them) and the
        `candidates` best keyword matches (`websearch_to_tsquery` in `language`, ranked by
        `ts_rank_cd`) are fused by reciprocal rank fusion. Each chunk has `.score`, `.vector_rank` and
        `.keyword_rank` (None where that ranking did not list it).
        """
        org_id = id_of(organization)
        if not isinstance(text, str):
            raise ArgumentError(f"hybrid_search text must be a string, got {type(text).__name__}")
        if language not in TEXT_SEARCH_LANGUAGES:
            raise ArgumentError(f"hybrid_search language must be one of PostgreSQL's text search configurations "
                                f"({', '.join(TEXT_SEARCH_LANGUAGES)}), got {language!r}")
        words = len(WORD.findall(text)) if len(text) <= MAX_QUERY_CHARS else None  # a long text is not scanned
        if words is None or words > MAX_QUERY_WORDS:
            counted = f" and {words} words" if words is not None else ""
            raise ArgumentError(f"hybrid_search text must be a search box's query, at most {MAX_QUERY_CHARS:,} "
                                f"characters and {MAX_QUERY_WORDS} words; got {len(text):,} characters{counted}; "
                                "nothing was sent")
        bounded("hybrid_search k", k, 1, MAX_K, "rows")
        if candidates is not None:
            bounded("hybrid_search candidates", candidates, k, MAX_K, "rows")
        with tenant(org_id):  # the count, the plan's probes and the search, all as this organization
            n = candidates or max(50, 5 * k)
            chunks = cls.select(cls.id).where((cls.organization == org_id) & cls.embedding.is_null(False))
            plan = plan_search(chunks, cls.embedding, embedding, k=n)
            vector_sql, vector_params = plan.query.sql()
            columns = ", ".join(
                f'{field.send_function}(d."{field.column_name}") AS "{field.column_name}"'
                if getattr(field, "send_function", "") else f'd."{field.column_name}"'
                for field in cls._meta.sorted_fields if not is_generated(field))
            # fused is MATERIALIZED so the last join is on a plain column: an inlined COALESCE is not LEAKPROOF,
            # and under row-level security that join could not use the primary key (it read the whole tenant).
            sql = f"""
WITH by_vector AS (SELECT v.id, row_number() OVER (ORDER BY v.distance) AS rank FROM ({vector_sql}) AS v),
by_keyword AS (
    SELECT t.id, row_number() OVER (ORDER BY t.relevance DESC, t.id) AS rank FROM (
        SELECT c.id, ts_rank_cd(c.search_text, q) AS relevance
        FROM document_chunks c, websearch_to_tsquery(%s::regconfig, %s) AS q
        WHERE c.organization_id = %s AND c.search_text @@ q
        ORDER BY relevance DESC LIMIT %s) AS t),
fused AS MATERIALIZED (
    SELECT coalesce(v.id, w.id) AS id, v.rank AS vector_rank, w.rank AS keyword_rank,
           coalesce(1.0 / ({RRF_K} + v.rank), 0) + coalesce(1.0 / ({RRF_K} + w.rank), 0) AS score
    FROM by_vector v FULL OUTER JOIN by_keyword w ON w.id = v.id)
SELECT {columns}, f.score::float8 AS score, f.vector_rank, f.keyword_rank
FROM fused f JOIN document_chunks d ON d.id = f.id
ORDER BY f.score DESC, d.id LIMIT %s"""
            params = [*vector_params, language, text, str(org_id), n, k]
            with search_limit(cls._meta.database) as limit, riding(limit + plan_settings(plan)):
                query = cls.raw(sql, *params)
                return list(query._get_cursor_wrapper(read_sql(cls._meta.database)(sql, params)))


# halfvec: half the size and build time of float32 at the same recall and speed, re-ranked exactly
# (benchmarks/scale.py, migration 007). `search` and `nearest` go through it as it is declared.
DocumentChunk.add_index(HNSWIndex(DocumentChunk.embedding, metric="cosine", m=16, ef_construction=64,
                                  quantize="halfvec"))
DocumentChunk.add_index(DocumentChunk.index(DocumentChunk.search_text, using="gin",
                                            name="document_chunks_search_text_gin"))
