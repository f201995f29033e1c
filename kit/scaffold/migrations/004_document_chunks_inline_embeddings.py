"""Peewee migrations -- 004_document_chunks_inline_embeddings.py.

Keep document chunk embeddings in the row: toast_tuple_target = 8160 on document_chunks.

A 1536-d embedding is 6 KB, over PostgreSQL's default 2 KB threshold, so each one was stored out of
line (TOAST) and read back through the TOAST index. In the row (benchmarks/storage.py, 30,000 rows):
exact scans 2.5x faster, COPY 1.24x, and HNSW builds get parallel workers (2.0x on 2 cores). Rows
written before this migration keep their layout until the table is rewritten (VACUUM FULL or
CLUSTER); nothing is lost.
"""

import peewee as pw
from peewee_migrate import Migrator


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    """Keep rows of up to 8160 bytes whole."""
    migrator.sql('ALTER TABLE "document_chunks" SET (toast_tuple_target = 8160)')


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    """Back to PostgreSQL's default TOAST threshold."""
    migrator.sql('ALTER TABLE "document_chunks" RESET (toast_tuple_target)')
