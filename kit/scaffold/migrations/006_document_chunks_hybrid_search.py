"""Peewee migrations -- 006_document_chunks_hybrid_search.py.

Keyword search on document chunks, for `DocumentChunk.hybrid_search`: a `language` column (one of
PostgreSQL's built-in text search configurations, 'english' unless said otherwise), a generated
`search_text` tsvector of the content in that language, and a GIN index on it. Existing chunks get
'english' and their search_text at once (the table is rewritten once); nothing else changes.
"""

import peewee as pw
from peewee_migrate import Migrator

import kit.migrate.operations as kit_ops
from kit.models.base import GeneratedTSVectorField

SEARCH_TEXT = "to_tsvector(CASE language WHEN 'simple' THEN 'simple'::regconfig WHEN 'arabic' THEN 'arabic'::regconfig WHEN 'armenian' THEN 'armenian'::regconfig WHEN 'basque' THEN 'basque'::regconfig WHEN 'catalan' THEN 'catalan'::regconfig WHEN 'danish' THEN 'danish'::regconfig WHEN 'dutch' THEN 'dutch'::regconfig WHEN 'english' THEN 'english'::regconfig WHEN 'finnish' THEN 'finnish'::regconfig WHEN 'french' THEN 'french'::regconfig WHEN 'german' THEN 'german'::regconfig WHEN 'greek' THEN 'greek'::regconfig WHEN 'hindi' THEN 'hindi'::regconfig WHEN 'hungarian' THEN 'hungarian'::regconfig WHEN 'indonesian' THEN 'indonesian'::regconfig WHEN 'irish' THEN 'irish'::regconfig WHEN 'italian' THEN 'italian'::regconfig WHEN 'lithuanian' THEN 'lithuanian'::regconfig WHEN 'nepali' THEN 'nepali'::regconfig WHEN 'norwegian' THEN 'norwegian'::regconfig WHEN 'portuguese' THEN 'portuguese'::regconfig WHEN 'romanian' THEN 'romanian'::regconfig WHEN 'russian' THEN 'russian'::regconfig WHEN 'serbian' THEN 'serbian'::regconfig WHEN 'spanish' THEN 'spanish'::regconfig WHEN 'swedish' THEN 'swedish'::regconfig WHEN 'tamil' THEN 'tamil'::regconfig WHEN 'turkish' THEN 'turkish'::regconfig WHEN 'yiddish' THEN 'yiddish'::regconfig END, content)"


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    """Add language, search_text and its GIN index."""
    migrator.add_fields(
        "document_chunks",
        language=pw.TextField(constraints=[pw.SQL("CHECK (language IN ('simple', 'arabic', 'armenian', 'basque', 'catalan', 'danish', 'dutch', 'english', 'finnish', 'french', 'german', 'greek', 'hindi', 'hungarian', 'indonesian', 'irish', 'italian', 'lithuanian', 'nepali', 'norwegian', 'portuguese', 'romanian', 'russian', 'serbian', 'spanish', 'swedish', 'tamil', 'turkish', 'yiddish'))"),
                                           pw.SQL("DEFAULT 'english'")], default="english"),
        search_text=GeneratedTSVectorField(SEARCH_TEXT),
    )
    kit_ops.add_index(migrator, "document_chunks", "search_text", method="gin", name="document_chunks_search_text_gin")


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    """Drop them."""
    kit_ops.drop_index(migrator, "document_chunks", "document_chunks_search_text_gin")
    migrator.remove_fields("document_chunks", "search_text")  # before language, which it is computed from
    migrator.remove_fields("document_chunks", "language")
