"""The SaaS models on the migrated test database: conventions, constraints, and domain operations under threads."""

from __future__ import annotations

import datetime as dt
import secrets
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import peewee
import pytest
from helpers import as_owner

from kit import TenantRequired, all_tenants, tenant
from kit.db import database
from kit.errors import NotFound
from kit.models import (
    ALL_MODELS,
    AuditLog,
    DocumentChunk,
    DocumentSource,
    FeatureFlag,
    InsufficientCredits,
    Invitation,
    InvitationError,
    Member,
    Organization,
    OrgCredit,
    Plan,
    RoadmapItem,
    RoadmapVote,
    Subscription,
    Usage,
    User,
    WebhookEvent,
    current_plan,
    is_entitled,
    within_quota,
)
from kit.models.base import utcnow


def org(**kw) -> Organization:
    tag = secrets.token_hex(4)
    return Organization.create(name=kw.get("name", f"Org {tag}"), slug=f"org-{tag}")


def user(**kw) -> User:
    tag = secrets.token_hex(4)
    return User.create(name=kw.get("name", f"User {tag}"), email=f"{tag}@example.com")


def run_threads(count: int, target, *args):
    """Start `count` threads at once on `target`; return results and exceptions."""
    barrier = threading.Barrier(count)
    results, errors = [], []

    def work():
        barrier.wait()
        try:
            with database.connection_context():
                results.append(target(*args))
        except Exception as exc:  # noqa: BLE001 - collected for the assertions
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


def test_every_table_is_snake_case_plural_and_uses_the_kit_database():
    names = {m._meta.table_name for m in ALL_MODELS}
    assert len(names) == 28
    assert {"users", "two_factors", "org_credits", "document_chunks", "webhook_deliveries", "usage"} <= names
    assert all(m._meta.database is database for m in ALL_MODELS)


def test_uuid_keys_come_from_the_database_and_timestamps_are_aware():
    o = org()
    assert isinstance(o.id, uuid.UUID)
    row = database.execute_sql("SELECT created_at, updated_at FROM organizations WHERE id = %s", (o.id,)).fetchone()
    assert row[0].tzinfo is not None
    raw = database.execute_sql("INSERT INTO users (name, email) VALUES ('Raw', %s) RETURNING id, created_at",
                               (f"{secrets.token_hex(4)}@x.io",)).fetchone()
    assert isinstance(raw[0], str | uuid.UUID) and raw[1] is not None  # defaults hold for raw SQL too


def test_updated_at_moves_on_every_save_and_update():
    o = org()
    with tenant(o):
        _updated_at_moves(o)


def _updated_at_moves(o):
    first = Organization.get_by_id(o.id).updated_at
    time.sleep(0.01)
    o.name = "Renamed"
    o.save()
    second = Organization.get_by_id(o.id).updated_at
    assert second > first
    time.sleep(0.01)
    Organization.update(name="Again").where(Organization.id == o.id).execute()
    assert Organization.get_by_id(o.id).updated_at > second


def test_foreign_keys_cascade_or_set_null():
    o, u = org(), user()
    with tenant(o):
        _cascades(o, u)


def _cascades(o, u):
    source = DocumentSource.create(organization=o, created_by=u, title="Guide")
    DocumentChunk.create(source=source, organization=o, position=0, content="hello", embedding=np.ones(1536))
    u.delete_instance()
    assert DocumentSource.get_by_id(source.id).created_by_id is None  # SET NULL: the source outlives its author
    o.delete_instance()
    assert DocumentChunk.select().where(DocumentChunk.source == source.id).count() == 0  # CASCADE


@pytest.mark.parametrize(
    "make",
    [
        lambda o: Member.create(organization=o, user=user(), role=""),
        lambda o: Member.create(organization=o, user=user(), role="admin,,member"),
        lambda o: Member.create(organization=o, user=user(), role="admin, member"),
        lambda o: Member.create(organization=o, user=user(), role="admin,"),
        lambda o: Member.create(organization=o, user=user(), role="ad\x01min"),
        lambda o: Member.create(organization=o, user=user(), role="x" * 201),
        lambda o: Invitation.create(organization=o, email="a@b.c", role=" owner", inviter=user(),
                                    expires_at=utcnow()),
        lambda o: Organization.create(name="Listy", slug=secrets.token_hex(4), metadata=["not", "an", "object"]),
        lambda o: Subscription.create(organization=o, plan=Plan.create(slug=secrets.token_hex(3), name="P"),
                                      status="on_fire"),
        lambda o: Plan.create(slug=secrets.token_hex(3), name="Negative", price=-1),
        lambda o: Plan.create(slug=secrets.token_hex(3), name="Listy", entitlements=["a"]),
        lambda o: FeatureFlag.create(organization=o, key="x", rollout_percent=101),
    ],
)
def test_check_constraints_refuse_bad_values(make):
    o = org()
    with pytest.raises(peewee.IntegrityError, match="check constraint"):
        with tenant(o), database.atomic():
            make(o)


def test_unique_constraints_hold():
    o, u = org(), user()
    with tenant(o):
        _unique_constraints_hold(o, u)


def _unique_constraints_hold(o, u):
    Member.create(organization=o, user=u)
    with pytest.raises(peewee.IntegrityError), database.atomic():
        Member.create(organization=o, user=u)
    item = RoadmapItem.create(title="Dark mode")
    RoadmapVote.create(item=item, user=u)
    with pytest.raises(peewee.IntegrityError), database.atomic():
        RoadmapVote.create(item=item, user=u)
    with all_tenants():  # a global flag is the owner's to set
        FeatureFlag.create(key=f"beta-{o.id}", enabled=True)
        with pytest.raises(peewee.IntegrityError), database.atomic():
            FeatureFlag.create(key=f"beta-{o.id}")  # one global flag per key: NULLS NOT DISTINCT
    FeatureFlag.create(key=f"beta-{o.id}", organization=o)  # and one per organization


def test_audit_log_is_append_only_in_the_database():
    o = org()
    entry = AuditLog.record("member.invited", organization=o, actor=user(), ip="10.0.0.1", note="hi")
    assert entry.metadata == {"note": "hi"}
    statements = ("UPDATE audit_logs SET action = 'x' WHERE id = %s", "DELETE FROM audit_logs WHERE id = %s")
    with tenant(o):  # the application may not even ask: it holds INSERT and SELECT only
        for statement in statements:
            with pytest.raises(peewee.DatabaseError, match="permission denied for table audit_logs"), \
                    database.atomic():
                database.execute_sql(statement, (entry.id,))
    with all_tenants():  # the door holds the application's privileges: it may not ask either
        for statement in statements:
            with pytest.raises(peewee.DatabaseError, match="permission denied for table audit_logs"), \
                    database.atomic():
                database.execute_sql(statement, (entry.id,))
    with as_owner() as owner:  # the owner may ask, and the table's triggers refuse
        for statement in statements:
            with pytest.raises(peewee.DatabaseError, match="audit_logs is append-only"), owner.atomic():
                owner.execute_sql(statement, (entry.id,))
        with pytest.raises(peewee.DatabaseError, match="append-only"), owner.atomic():
            owner.execute_sql("TRUNCATE audit_logs")
    with tenant(o):
        assert AuditLog.get_by_id(entry.id).action == "member.invited"


def test_credits_never_go_negative_under_concurrent_consumers():
    o = org()
    assert OrgCredit.grant(o, 100) == 100
    results, errors = run_threads(40, OrgCredit.consume, o.id, 7)
    assert len(results) == 14  # 14 * 7 = 98 <= 100 < 15 * 7
    assert len(errors) == 26 and all(isinstance(e, InsufficientCredits) for e in errors)
    assert OrgCredit.balance_of(o) == 2
    assert "has 2 credits, 7 were asked for" in str(errors[-1])
    with pytest.raises(ValueError, match="positive whole number"):
        OrgCredit.consume(o, 0)


def test_consuming_for_an_organization_that_does_not_exist_is_not_found_not_insufficient():
    missing = uuid.uuid4()
    with pytest.raises(NotFound, match=f"organization {missing} does not exist"):
        OrgCredit.consume(missing, 1)
    never_granted = org()  # exists, no balance yet: that is 0 credits, not a missing organization
    with pytest.raises(InsufficientCredits, match="has 0 credits, 1 were asked for"):
        OrgCredit.consume(never_granted, 1)


def test_concurrent_grants_add_up():
    o = org()
    results, errors = run_threads(30, OrgCredit.grant, o.id, 5)
    assert not errors and OrgCredit.balance_of(o) == 150
    assert sorted(results) == list(range(5, 151, 5))


def test_usage_increments_are_never_lost():
    o = org()
    period = dt.date(2026, 11, 1)

    def bump():
        return [Usage.increment(o, "api_calls", 3, period_start=period) for _ in range(10)]

    results, errors = run_threads(20, bump)
    assert not errors
    with tenant(o):
        assert Usage.get(organization=o, metric="api_calls", period_start=period).quantity == 600
    assert max(max(r) for r in results) == 600


def invite(o: Organization, email: str, **kw) -> Invitation:
    with tenant(o):
        return Invitation.create(organization=o, email=email, inviter=kw.pop("inviter", None) or user(),
                                 expires_at=kw.pop("expires_at", utcnow() + dt.timedelta(days=1)), **kw)


def test_roles_are_what_better_auth_writes_several_and_custom():
    o = org()
    with tenant(o):
        _roles(o)


def _roles(o):
    owner = Member.create(organization=o, user=user(), role="owner")
    both = Member.create(organization=o, user=user(), role="admin,member")
    custom = Member.create(organization=o, user=user(), role="billing manager")
    assert both.roles == ("admin", "member") and both.has_role("member") and not both.has_role("owner")
    assert custom.roles == ("billing manager",)
    holding = {m.id for m in Member.select().where(Member.organization == o, Member.holding("admin"))}
    assert holding == {both.id}
    assert {m.id for m in Member.select().where(Member.holding("owner"), Member.organization == o)} == {owner.id}
    assert not Member.select().where(Member.organization == o, Member.holding("admin,member")).exists()


def test_organization_metadata_is_json_text_for_other_clients_and_a_dict_here():
    o = Organization.create(name="Meta", slug=f"meta-{secrets.token_hex(3)}", metadata={"plan": "pro", "n": 2})
    assert Organization.get_by_id(o.id).metadata == {"plan": "pro", "n": 2}
    raw = database.execute_sql("SELECT metadata, pg_typeof(metadata)::text FROM organizations WHERE id = %s",
                               (o.id,)).fetchone()
    assert raw == ('{"plan":"pro","n":2}', "text")  # what Better Auth reads: a JSON string
    with pytest.raises(peewee.DatabaseError, match="check constraint"), tenant(o), database.atomic():
        database.execute_sql("UPDATE organizations SET metadata = 'not json' WHERE id = %s", (o.id,))


def test_updated_at_is_kept_by_the_database_for_any_client(monitor):
    o = org()
    before = Organization.get_by_id(o.id).updated_at
    time.sleep(0.01)
    with monitor.cursor() as cur:  # another client that never mentions updated_at (Better Auth, psql)
        cur.execute("UPDATE organizations SET name = 'Raw' WHERE id = %s RETURNING updated_at", (o.id,))
        raw = cur.fetchone()[0]
        assert raw > before
        chosen = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)  # one that sets it keeps its value
        cur.execute("UPDATE organizations SET updated_at = %s WHERE id = %s RETURNING updated_at", (chosen, o.id))
        assert cur.fetchone()[0] == chosen
        cur.execute("""SELECT count(*) FROM information_schema.columns c WHERE c.column_name = 'updated_at'
                       AND c.table_schema = current_schema() AND NOT EXISTS (
                         SELECT 1 FROM pg_trigger t WHERE t.tgrelid = quote_ident(c.table_name)::regclass
                         AND t.tgname = c.table_name || '_touch_updated_at')""")
        assert cur.fetchone()[0] == 0  # every table with the column has the trigger


def test_invitation_is_accepted_only_by_the_invited_email():
    o = org()
    invited = invite(o, "carol@invited.org")
    stranger = user()
    with pytest.raises(InvitationError, match="is for another email address"):
        Invitation.accept(invited.id, stranger)
    with tenant(o):
        assert Invitation.get_by_id(invited.id).status == "pending"
    carol = User.create(name="Carol", email=f"Carol.{secrets.token_hex(3)}@Invited.org")
    mixed = invite(o, carol.email.lower(), role="admin,member")
    assert Invitation.accept(mixed.id, carol).roles == ("admin", "member")  # emails compare without case


@pytest.mark.parametrize("lookalike", ["\u212a", "\uff4b", "\U0001d424"],  # Kelvin sign, fullwidth k, math bold k
                         ids=["kelvin", "fullwidth", "math-bold"])
def test_an_address_spelled_with_a_compatibility_character_is_another_person_s(lookalike):
    from kit.models.auth import same_address

    o = org()
    token = secrets.token_hex(3)
    invited = invite(o, f"kate.{token}@acme.com", role="admin")
    impostor = User.create(name="Impostor", email=f"{lookalike}ate.{token}@acme.com")  # the k spelled otherwise
    with pytest.raises(InvitationError, match="is for another email address"):
        Invitation.accept(invited.id, impostor)
    assert same_address("Admin@ACME.com", "admin@acme.com") and not same_address("\u017fam@x.io", "sam@x.io")


def test_invitation_accepted_twice_at_once_creates_one_membership():
    o, u = org(), user()
    invite_ = invite(o, u.email, role="admin")
    results, errors = run_threads(8, Invitation.accept, invite_.id, u.id)
    assert not errors, errors
    assert len({m.id for m in results}) == 1
    with tenant(o):
        assert Member.select().where(Member.organization == o).count() == 1
        assert Member.get(organization=o, user=u).role == "admin"
        assert Invitation.get_by_id(invite_.id).status == "accepted"
    twin = User.create(name="Twin", email=u.email.upper())  # the same address in other letters
    with pytest.raises(InvitationError, match="already accepted by someone else"):
        Invitation.accept(invite_.id, twin)


def test_expired_or_revoked_invitations_are_refused():
    o, u = org(), user()
    expired = invite(o, u.email, expires_at=utcnow() - dt.timedelta(minutes=1))
    with pytest.raises(InvitationError, match="expired at"):
        Invitation.accept(expired.id, u)
    revoked = invite(o, u.email)
    with pytest.raises(TenantRequired, match="invitations: UPDATE of an organization's rows needs a tenant"):
        Invitation.revoke(revoked.id)  # revoking is done as the organization, and nothing says which
    with tenant(o):
        assert Invitation.revoke(revoked.id) is True
    with pytest.raises(InvitationError, match="was canceled; it cannot be accepted"):
        Invitation.accept(revoked.id, u)
    with tenant(o):
        assert Member.select().where(Member.organization == o).count() == 0


def test_webhook_event_recorded_twice_at_once_is_processed_once():
    handled = []
    event_id = f"evt_{secrets.token_hex(6)}"

    def handler(event):
        time.sleep(0.05)  # keep the first transaction open while the others arrive
        handled.append(event.event_id)

    results, errors = run_threads(6, WebhookEvent.process_once, event_id, "invoice.paid", {"n": 1}, handler)
    assert not errors
    assert sorted(results) == [False] * 5 + [True]
    assert handled == [event_id]
    assert WebhookEvent.get(event_id=event_id).status == "processed"


def test_a_failed_webhook_handler_leaves_the_event_to_retry():
    event_id = f"evt_{secrets.token_hex(6)}"

    def boom(event):
        raise RuntimeError("downstream is down")

    with pytest.raises(RuntimeError):
        WebhookEvent.process_once(event_id, "invoice.paid", {}, boom)
    assert WebhookEvent.get_or_none(event_id=event_id) is None
    assert WebhookEvent.process_once(event_id, "invoice.paid", {}, lambda e: None) is True


def test_entitlements_follow_the_current_plan():
    free = Plan.get_or_none(slug="free") or Plan.create(slug="free", name="Free", entitlements={"seats": 1})
    pro = Plan.create(slug=f"pro-{secrets.token_hex(3)}", name="Pro", price=2900,
                      entitlements={"sso": False, "api": True, "seats": 10, "documents": -1})
    o = org()
    assert current_plan(o).id == free.id
    with tenant(o):
        Subscription.create(organization=o, plan=pro, status="active")
    assert current_plan(o).id == pro.id
    assert is_entitled(o, "api") and not is_entitled(o, "sso") and not is_entitled(o, "unknown")
    assert within_quota(o, "seats", 9) and not within_quota(o, "seats", 10)
    assert within_quota(o, "documents", 10**9)
    with tenant(o):
        Subscription.update(status="canceled").where(Subscription.organization == o).execute()
    assert current_plan(o).id == free.id


def test_document_chunk_search_stays_in_the_organization():
    mine, theirs = org(), org()
    rng = np.random.default_rng(9)
    vectors = rng.standard_normal((40, 1536)).astype(np.float32)
    for owner, offset in ((mine, 0), (theirs, 20)):
        with tenant(owner):
            source = DocumentSource.create(organization=owner, title="doc")
            DocumentChunk.insert_many([
                {"source": source, "organization": owner, "position": i, "content": f"chunk {offset + i}",
                 "embedding": vectors[offset + i]} for i in range(20)
            ]).execute()
    query = vectors[25]  # nearest overall belongs to the other organization
    found = DocumentChunk.search(query, organization=mine, k=5)
    assert len(found) == 5 and all(c.organization_id == mine.id for c in found)
    assert [c.distance for c in found] == sorted(c.distance for c in found)
    other = DocumentChunk.search(query, organization=theirs.id, k=1, metric="l2")
    assert other[0].content == "chunk 25" and other[0].distance == pytest.approx(0, abs=1e-4)


def test_thread_pool_domain_calls_do_not_leak_connections():
    o = org()
    OrgCredit.grant(o, 1000)

    def spend(_):
        with database.connection_context():
            return OrgCredit.consume(o, 1)

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(spend, range(200)))
    assert OrgCredit.balance_of(o) == 800
    assert database.pool_stats()["in_use"] <= 1


def test_every_error_the_kit_raises_is_one_family_exported_from_kit():
    import inspect

    import kit
    import kit.errors

    family = [c for _, c in inspect.getmembers(kit.errors, inspect.isclass) if c.__module__ == "kit.errors"]
    assert len(family) >= 15 and all(issubclass(c, kit.KitError) for c in family)
    assert {c.__name__ for c in family} <= set(kit.__all__)
    from kit.fixtures import FixtureError
    from kit.migrate.executor import MigrationError
    from kit.vector import CopyRowError, VectorValueError

    for raised in (InsufficientCredits, InvitationError, FixtureError, MigrationError, CopyRowError, VectorValueError):
        assert issubclass(raised, kit.KitError) and raised is getattr(kit, raised.__name__)


@pytest.mark.parametrize("given", ["acme", 42, object(), ""])
def test_operations_that_take_an_organization_say_what_they_got(given):
    import kit

    o = org()
    OrgCredit.grant(o, 5)
    assert OrgCredit.balance_of(str(o.id)) == 5 and OrgCredit.balance_of(o.id) == 5
    calls = [lambda: DocumentChunk.search(np.ones(1536, dtype=np.float32), organization=given),
             lambda: OrgCredit.consume(given, 1), lambda: OrgCredit.balance_of(given),
             lambda: AuditLog.record("x.y", organization=given)]
    for call in calls:
        with pytest.raises(kit.ArgumentError) as caught:
            call()
        message = str(caught.value)
        assert message.startswith("organization: expected the row (a model instance) or its id (a UUID), got ")
        assert "\n" not in message
    assert OrgCredit.balance_of(o) == 5
