"""The real Better Auth (the version pinned in interop/better-auth) on the kit's auth tables.

`interop/better-auth/check.mjs` runs Better Auth with its schema validation on, configured exactly as
docs/better-auth.md tells an app to, against a database migrated and seeded by the kit; then the kit's models
read what Better Auth wrote, and `kit migrate verify` must stay clean.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kit import betterauth, migrate
from kit.fixtures import load, parse
from kit.models import ALL_MODELS, Invitation, Member, Organization, TwoFactor, User

ROOT = Path(__file__).resolve().parent.parent
INTEROP = ROOT / "interop" / "better-auth"
SECRET = "kit-test-secret-0123456789abcdef0123456789"


@pytest.fixture(scope="module")
def node() -> str:
    """The node binary, with the pinned Better Auth installed (`npm ci` on first use)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are not installed: the Better Auth test needs them")
    installed = INTEROP / "node_modules" / ".package-lock.json"
    lock = INTEROP / "package-lock.json"
    # one install at a time: tests/all's two runs reach this at once in a fresh clone, and two `npm ci` in
    # one directory remove each other's files (ENOTEMPTY); the second finds it installed once it may look
    with open(INTEROP / ".install.lock", "w") as turn:
        fcntl.flock(turn, fcntl.LOCK_EX)
        if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
            done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=INTEROP, capture_output=True,
                                  text=True, timeout=600)
            assert done.returncode == 0, f"npm ci failed: {done.stderr[-2000:]}"
    return node


def run_check(node: str, url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": url, "BETTER_AUTH_SECRET": SECRET}
    return subprocess.run([node, "check.mjs", *args], cwd=INTEROP, env=env, capture_output=True, text=True,
                          timeout=300)


def test_better_auth_runs_on_the_kit_schema_and_the_kit_reads_what_it_wrote(node, fresh_database, monkeypatch):
    db = fresh_database
    migrate.apply(db, ROOT / "migrations", say=lambda _: None)
    monkeypatch.setenv("BETTER_AUTH_SECRET", SECRET)  # the seed encrypts alice's TOTP secret with the app's secret
    load(parse(ROOT / "seeds" / "fixtures" / "dev.yaml"), db)

    done = run_check(node, db.scratch_url.replace("kit_owner@", "kit_auth@"))  # Better Auth's own role
    assert done.returncode == 0, done.stderr
    wrote = json.loads(done.stdout.strip().splitlines()[-1])

    with db.bind_ctx(ALL_MODELS):
        org = Organization.get_by_id(wrote["organization"])
        assert org.metadata == {"industry": "robotics", "seats": 5}  # Better Auth's JSON string, a dict here
        assert Organization.get(Organization.slug == "acme").metadata == {"industry": "manufacturing", "size": 120}

        erin = Member.get_by_id(wrote["erinMember"])
        assert erin.roles == ("member",)
        assert erin.updated_at > erin.created_at  # Better Auth never writes members.updated_at: the trigger did
        assert Invitation.get_by_id(wrote["erinInvitation"]).role == "admin,member"
        assert Invitation.get_by_id(wrote["erinInvitation"]).status == "accepted"
        owners = Member.select().where(Member.organization == org.id, Member.holding("owner"))
        assert [m.user_id for m in owners] == [User.get(User.email == "dave@example.com").id]

        dave = User.get_by_id(wrote["dave"])
        assert dave.two_factor_enabled
        factor = TwoFactor.get(TwoFactor.user == dave)
        assert factor.verified is True and factor.failed_verification_count == 0
        secrets = betterauth.load_secrets({"BETTER_AUTH_SECRET": SECRET})
        plain = betterauth.decrypt(factor.secret, secrets)
        assert base64.b32encode(plain.encode()).decode().rstrip("=") == wrote["daveTotp"]
        assert json.loads(betterauth.decrypt(factor.backup_codes, secrets)) == wrote["daveBackupCodes"]

        alice = TwoFactor.get(TwoFactor.user == User.get(User.email == "alice@example.com"))
        codes = json.loads(betterauth.decrypt(alice.backup_codes, secrets))
        assert codes == ["alice-backup-1", "alice-backup-3"]  # Better Auth used up the one the check signed in with

    assert migrate.verify(db, ROOT / "migrations") == []

    # The check above must be able to fail: Better Auth's own schema check names a column that is missing.
    db.execute_sql("ALTER TABLE two_factors DROP COLUMN locked_until")
    refused = run_check(node, db.scratch_url.replace("kit_owner@", "kit_auth@"), "schema")
    assert refused.returncode == 1
    assert "two_factors.locked_until" in refused.stderr


def test_encryption_round_trips_and_refuses_another_secret():
    one = betterauth.load_secrets({"BETTER_AUTH_SECRET": "one-secret"})
    other = betterauth.load_secrets({"BETTER_AUTH_SECRET": "another-secret"})
    sealed = betterauth.encrypt("base32:JBSWY3DPEHPK3PXP", one)
    assert len(bytes.fromhex(sealed)) == 24 + len("base32:JBSWY3DPEHPK3PXP") + 16  # nonce, text, tag
    assert betterauth.decrypt(sealed, one) == "base32:JBSWY3DPEHPK3PXP"
    assert sealed != betterauth.encrypt("base32:JBSWY3DPEHPK3PXP", one)  # a fresh nonce each time
    with pytest.raises(betterauth.DecryptionError, match="cannot be decrypted with this secret"):
        betterauth.decrypt(sealed, other)
    with pytest.raises(betterauth.DecryptionError, match="cannot be decrypted"):
        betterauth.decrypt("zz-not-hex", one)
    tampered = sealed[:-2] + ("00" if sealed[-2:] != "00" else "01")
    with pytest.raises(betterauth.DecryptionError):
        betterauth.decrypt(tampered, one)
    assert betterauth.load_secrets({}).current == betterauth.DEVELOPMENT_SECRET


def test_versioned_secrets_wrap_values_and_read_older_ones():
    env = {"BETTER_AUTH_SECRETS": "2:new-secret, 1:old-secret", "BETTER_AUTH_SECRET": "legacy-secret"}
    secrets = betterauth.load_secrets(env)
    sealed = betterauth.encrypt("x", secrets)
    assert sealed.startswith("$ba$2$") and betterauth.decrypt(sealed, secrets) == "x"
    old = betterauth.encrypt("y", betterauth.Secrets("old-secret", 1, {1: "old-secret"}))
    assert betterauth.decrypt(old, secrets) == "y"
    legacy = betterauth.encrypt("z", betterauth.Secrets("legacy-secret"))
    assert betterauth.decrypt(legacy, secrets) == "z"
    with pytest.raises(betterauth.DecryptionError, match="secret version 7, which is not set"):
        betterauth.decrypt("$ba$7$00", secrets)
    with pytest.raises(betterauth.ConfigError, match="BETTER_AUTH_SECRETS entry 2 must look like"):
        betterauth.load_secrets({"BETTER_AUTH_SECRETS": "1:a,oops"})
    assert "new-secret" not in repr(secrets) and "legacy-secret" not in repr(secrets)


def test_password_hashes_verify_and_refuse():
    stored = betterauth.hash_password("pässword")
    assert betterauth.verify_password(stored, "pässword")
    assert betterauth.verify_password(stored, "pa\u0308ssword")  # NFKC: the same password typed otherwise
    assert not betterauth.verify_password(stored, "password")
    assert not betterauth.verify_password("no-colon", "x")


def test_the_docs_show_the_configuration_the_suite_runs():
    page = (ROOT / "docs" / "better-auth.md").read_text()
    blocks = page.split("```js\n")[1:]
    assert blocks, "docs/better-auth.md has no ```js block"
    assert blocks[0].split("```")[0] == (INTEROP / "auth.mjs").read_text()


def test_a_session_the_kit_s_factories_make_is_one_better_auth_signs_in_with(node, migrated_database, monkeypatch):
    """`kit.testing`'s `signed_in` cookie: the real Better Auth finds the user, and refuses another secret's."""
    from kit.models import Session
    from kit.testing import Factory

    db = migrated_database
    monkeypatch.setenv("BETTER_AUTH_SECRET", SECRET)
    with db.bind_ctx(ALL_MODELS):
        make = Factory(1)
        user = make(User, email="kim@example.test", name="Kim")
        org = make(Organization, name="Kim's")
        make(Session, user=user, token="kit-made-token+/=", active_organization=org)  # characters the cookie escapes

    def signed_in_as(cookie: str) -> dict:
        env = {**os.environ, "DATABASE_URL": db.scratch_url.replace("kit_owner@", "kit_auth@"), "BETTER_AUTH_SECRET": SECRET}
        done = subprocess.run([node, "session.mjs", cookie], cwd=INTEROP, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    cookie = f"{betterauth.SESSION_COOKIE}={betterauth.session_cookie('kit-made-token+/=')}"
    assert signed_in_as(cookie) == {"email": "kim@example.test", "activeOrganizationId": str(org.id)}
    other = betterauth.load_secrets({"BETTER_AUTH_SECRET": "another-secret-0123456789abcdef0123456789"})
    assert signed_in_as(f"{betterauth.SESSION_COOKIE}={betterauth.session_cookie('kit-made-token+/=', other)}") == {
        "email": None, "activeOrganizationId": None}
