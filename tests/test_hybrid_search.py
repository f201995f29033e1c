"""Hybrid search on document chunks: keywords (generated tsvector, GIN) and vectors fused by reciprocal rank.

The corpus is small and labelled, with embeddings made for it (no embedding model needed): for the
query "ERR-4471" near the topic "payment webhooks", the chunk that answers it has the rare keyword
*and* the topic, while the nearest chunk is a paraphrase without the keyword, and the best keyword
match is off topic. Hybrid must put the answer first where each ranking alone puts it second.
"""

from __future__ import annotations

import secrets
import time

import numpy as np
import pytest

from kit import ArgumentError, all_tenants, tenant
from kit.db import database
from kit.fixtures import FixtureError, parse
from kit.models import DocumentChunk, DocumentSource, Organization
from kit.models.rag import EMBEDDING_DIMENSIONS

RNG = np.random.default_rng(44)
TOPICS = {name: RNG.standard_normal(EMBEDDING_DIMENSIONS).astype(np.float32)
          for name in ("webhooks", "cli", "onboarding", "pricing", "security")}


def near(topic: str, spread: float) -> np.ndarray:
    return TOPICS[topic] + RNG.standard_normal(EMBEDDING_DIMENSIONS).astype(np.float32) * spread


ANSWER = "Webhook deliveries failing with ERR-4471 can be retried from the billing dashboard."
PARAPHRASE = "When a payment notification endpoint keeps failing, resend the events once the receiver is fixed."
KEYWORDS_ONLY = "Release notes: ERR-4471 was renamed in the CLI; the ERR-4471 guide lists every ERR-4471 flag."


@pytest.fixture()
def corpus(test_db_url):
    """Two organizations; the first holds the labelled corpus, the second the same words (never to leak)."""
    orgs = [Organization.create(name=f"Hybrid {i}", slug=f"hybrid-{secrets.token_hex(4)}") for i in range(2)]
    chunks = {}
    for org in orgs:
        with tenant(org):
            source = DocumentSource.create(organization=org, title="Handbook")
            rows = [("answer", ANSWER, near("webhooks", 0.45)), ("paraphrase", PARAPHRASE, near("webhooks", 0.2)),
                    ("keywords", KEYWORDS_ONLY, near("cli", 0.3))]
            rows += [(f"filler{i}", f"Notes about {topic} number {i}.", near(topic, 0.5))
                     for i, topic in enumerate(["onboarding", "pricing", "security", "cli", "pricing"] * 4)]
            for position, (label, text, embedding) in enumerate(rows):
                chunks[(org.id, label)] = DocumentChunk.create(source=source, organization=org, position=position,
                                                               content=text, embedding=embedding)
    with tenant(orgs[0]):  # each test runs as the organization that holds the corpus
        yield orgs, chunks
    with all_tenants():
        Organization.delete().where(Organization.id.in_([o.id for o in orgs])).execute()


def rank_of(rows, chunk) -> int | None:
    ids = [r.id for r in rows]
    return ids.index(chunk.id) + 1 if chunk.id in ids else None


def test_hybrid_beats_either_ranking_alone_on_a_rare_keyword_with_a_paraphrase(corpus):
    orgs, chunks = corpus
    org = orgs[0]
    answer, paraphrase, keywords = (chunks[(org.id, label)] for label in ("answer", "paraphrase", "keywords"))
    query = near("webhooks", 0.05)
    by_vector = DocumentChunk.search(query, organization=org, k=5)
    assert rank_of(by_vector, paraphrase) == 1 and rank_of(by_vector, answer) == 2
    hybrid = DocumentChunk.hybrid_search("ERR-4471", query, organization=org, k=5)
    assert rank_of(hybrid, answer) == 1
    top = hybrid[0]
    assert (top.vector_rank, top.keyword_rank) == (2, 2)
    assert top.score == pytest.approx(2 / 62)
    by_keyword = {r.id: r.keyword_rank for r in hybrid if r.keyword_rank}
    assert by_keyword == {keywords.id: 1, answer.id: 2}  # the keyword ranking alone puts the answer second
    assert {r.id for r in hybrid} <= {c.id for (o, _), c in chunks.items() if o == org.id}  # one tenant only
    assert isinstance(top.embedding, np.ndarray) and top.content == ANSWER
    assert [r.score for r in hybrid] == sorted((r.score for r in hybrid), reverse=True)


def test_the_language_of_a_chunk_decides_its_stemming(corpus):
    orgs, _ = corpus
    source = DocumentSource.create(organization=orgs[0], title="Deutsch")
    text = "Die Häuser am See werden im Winter geschlossen."
    german, english = (DocumentChunk.create(source=source, organization=orgs[0], position=i, language=language,
                                            content=text, embedding=near("cli", 1))
                       for i, language in enumerate(("german", "english")))

    def stored(chunk):
        return DocumentChunk.select(DocumentChunk.search_text).where(DocumentChunk.id == chunk.id).scalar()

    assert "'haus'" in stored(german) and "'häuser'" in stored(english)  # Häuser -> haus in German only
    found = DocumentChunk.hybrid_search("Haus", near("pricing", 1), organization=orgs[0], k=40, language="german")
    ranks = {r.id: r.keyword_rank for r in found}
    assert ranks[german.id] == 1 and ranks[english.id] is None


def test_search_text_is_computed_never_written_and_left_out_of_fixtures(corpus, tmp_path):
    orgs, chunks = corpus
    chunk = DocumentChunk.get_by_id(chunks[(orgs[0].id, "answer")].id)
    assert "search_text" not in chunk.__data__  # not in the default SELECT
    chunk.content = "Now about invoices."
    chunk.save()  # saving a loaded row leaves the generated column alone
    stored = DocumentChunk.select(DocumentChunk.search_text).where(DocumentChunk.id == chunk.id).scalar()
    assert "'invoic'" in stored and "err" not in stored
    fixture = tmp_path / "chunks.yaml"
    fixture.write_text("document_chunks:\n  c1: {search_text: x}\n")
    with pytest.raises(FixtureError, match="document_chunks.search_text is computed by the database"):
        parse(fixture)


@pytest.mark.parametrize("text", ["'\"&|!():*<->", "", "a & ! (", "ERR-4471 OR -x \"unclosed", "\x00" * 0 + "ü" * 500])
def test_any_text_is_a_query_never_a_syntax_error(corpus, text):
    orgs, _ = corpus
    rows = DocumentChunk.hybrid_search(text, near("webhooks", 0.05), organization=orgs[0], k=3)
    assert len(rows) == 3  # the vector ranking alone still answers


def test_bad_arguments_are_one_sentence(corpus):
    orgs, _ = corpus
    with pytest.raises(ArgumentError, match="language must be one of PostgreSQL's text search"):
        DocumentChunk.hybrid_search("x", near("cli", 1), organization=orgs[0], language="klingon")
    with pytest.raises(ArgumentError, match="text must be a string, got int"):
        DocumentChunk.hybrid_search(5, near("cli", 1), organization=orgs[0])
    with pytest.raises(ArgumentError, match="hybrid_search k must be a whole number of rows from 1 to 1,000"):
        DocumentChunk.hybrid_search("x", near("cli", 1), organization=orgs[0], k=0)
    with pytest.raises(ArgumentError, match="hybrid_search candidates must be a whole number of rows from 5 to"):
        DocumentChunk.hybrid_search("x", near("cli", 1), organization=orgs[0], k=5, candidates=-1)
    with pytest.raises(ArgumentError, match="k must be a whole number of rows from 1 to 1,000, got '9223372036"):
        DocumentChunk.hybrid_search("x", near("cli", 1), organization=orgs[0], k=2**63)
    with pytest.raises(ArgumentError):
        DocumentChunk.hybrid_search("x", near("cli", 1), organization="not-an-org")


def test_the_keyword_side_uses_the_gin_index(corpus):
    orgs, _ = corpus
    with tenant(orgs[0]), database.atomic():  # under row-level security, with the match hybrid_search sends
        database.execute_sql("SET LOCAL enable_seqscan = off")  # a tiny table: ask whether the index can serve
        plan = "\n".join(r[0] for r in database.execute_sql(
            "EXPLAIN SELECT id FROM document_chunks WHERE search_text @@ websearch_to_tsquery('english', 'x')"))
    # Not with the organization's filter written out as well: the planner may then rightly prefer the
    # organization's B-tree on a table this small (it did in one full run), which says nothing of the GIN.
    assert "document_chunks_search_text_gin" in plan


@pytest.mark.parametrize("text", [" ".join(f"-w{i}" for i in range(5000)),  # 30 KB of negated words
                                  " ".join(f"word{i}" for i in range(5000)) + "x" * 5000,  # 40 KB of plain words
                                  " ".join(["a"] * 65)])  # short, but more words than a query has
def test_a_hostile_text_is_refused_before_any_sql_in_one_sentence(corpus, text):
    orgs, _ = corpus
    start = time.perf_counter()
    with pytest.raises(ArgumentError, match="hybrid_search text must be a search box's query, at most 1,000 "
                                            "characters and 64 words; got .*nothing was sent"):
        DocumentChunk.hybrid_search(text, near("cli", 1), organization=orgs[0])
    assert time.perf_counter() - start < 0.1
