"""The kit's pytest plugin (loaded by its `pytest11` entry point: a project made by `kit init` has it).

Fixtures, each made only when a test asks for it:

- `kit_database` (session): this run's database (each pytest-xdist worker its own), cloned from a
  template migrated once per set of migrations (`kit.testing.template`); `kit.db.database` points
  at it as the application's role, row-level security on;
- `db`: the test inside one transaction, rolled back at its end, so nothing it writes stays;
  `atomic()` blocks are savepoints, and every thread shares the transaction (a web test client's too);
- `transactional_db`: for a test that must really commit (or uses `kit.aio`, or writes through
  `all_tenants()`): a database cloned for it alone, dropped after;
- `make`: a `Factory` seeded by the test's id: `make(Model, **given)`, `make.many(Model, n, **given)`;
- `org`, `other_org`: two organizations (the second to prove isolation);
- `tenant`: `org`, with the test inside `kit.tenant(org)`;
- `user`, `member`: a user, and that user an owner of `org`;
- `signed_in`: a member with a Better Auth session row (`.user`, `.session`, `.token`, `.cookie`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # the plugin loads in every pytest run where the kit is installed: it imports the kit lazily
    from kit.testing.factories import Factory


def _urls() -> tuple[str, str, str, str]:
    """The admin's URL (creates databases) and the owner's, application's and door's on the server under test."""
    from kit import embedded
    from kit.config import load_settings
    from kit.db import resolve_url
    from kit.errors import ConfigError
    from kit.roles import ADMIN, APP, DOOR, OWNER

    settings = load_settings()
    admin = os.environ.get("KIT_TEST_ADMIN_URL")
    if not admin:
        if settings.database_url:
            raise ConfigError("the test databases are created as a role that may create databases: set "
                              "KIT_TEST_ADMIN_URL (DATABASE_URL is set, so the embedded server is not used)")
        admin = embedded.start(settings.data_dir, ADMIN)
    return admin, resolve_url(settings, OWNER), resolve_url(settings, APP), resolve_url(settings, DOOR)


class _Run:
    """The databases of this run: the template and the clone the application's database points at."""

    def __init__(self, worker: str) -> None:
        from kit.migrate.loader import default_directory
        from kit.testing.template import ensure_template

        self.admin, self.owner, self.app, self.door = _urls()
        self.worker = worker
        self.session = ""  # the run's own database, once cloned
        self.template = ensure_template(self.admin, self.owner, default_directory())

    def clone(self) -> str:
        """A new database from the template: its name."""
        from kit.testing.template import clone

        return clone(self.admin, self.template, self.worker)

    def point_at(self, name: str) -> str:
        """Point `kit.db.database` at database `name` as the application's role; its URL."""
        from kit.db import database
        from kit.testing.template import with_dbname

        database.close_all()
        url = with_dbname(self.app, name)
        database.configure(url, door_url=with_dbname(self.door, name))
        return url

    def drop(self, name: str) -> None:
        """Drop a database this run cloned."""
        from kit.db import database
        from kit.testing.template import drop

        database.close_all()
        drop(self.admin, name)


@pytest.fixture(scope="session")
def _kit_run(request: pytest.FixtureRequest) -> _Run:
    worker = getattr(request.config, "workerinput", {}).get("workerid", "main")
    return _Run(worker)


@pytest.fixture(scope="session")
def kit_database(_kit_run: _Run) -> Iterator[str]:
    """This run's database as the application's role (its URL), cloned from the migrated template."""
    name = _kit_run.session = _kit_run.clone()
    try:
        yield _kit_run.point_at(name)
    finally:
        _kit_run.drop(name)


class _RolledBack(Exception):
    """The end of a `db` test: its transaction is rolled back."""


@pytest.fixture
def db(kit_database: str) -> Iterator[Any]:
    """`kit.db.database`, with the test inside one transaction that is rolled back at its end."""
    from kit.db import database

    if not database.is_closed() and not database.in_transaction():
        database.close()
    with database.shared_across_threads():
        try:
            with database.atomic():
                yield database
                raise _RolledBack  # leaves the transaction by its rollback path
        except _RolledBack:
            pass
        finally:
            database.close()


@pytest.fixture
def transactional_db(_kit_run: _Run, kit_database: str) -> Iterator[Any]:
    """`kit.db.database` on a database cloned for this test alone: what it commits stays until the test ends."""
    from kit.db import database

    name = _kit_run.clone()
    _kit_run.point_at(name)
    try:
        yield database
    finally:
        _kit_run.drop(name)
        _kit_run.point_at(_kit_run.session)


@pytest.fixture
def make(request: pytest.FixtureRequest) -> Factory:
    """A factory of rows, its values the same for the same test: `make(Model, **given)`, `make.many(...)`."""
    from kit.testing.factories import Factory, seed_of

    return Factory(seed_of(request.node.nodeid))


@pytest.fixture
def org(db: Any, make: Factory) -> Any:
    """An organization."""
    from kit.models import Organization

    return make(Organization, name="Acme")


@pytest.fixture
def other_org(db: Any, make: Factory) -> Any:
    """A second organization, to prove the first one's rows stay its own."""
    from kit.models import Organization

    return make(Organization, name="Globex")


@pytest.fixture
def tenant(org: Any) -> Iterator[Any]:
    """`org`, with the test inside `kit.tenant(org)`."""
    import kit

    with kit.tenant(org):
        yield org


@pytest.fixture
def user(db: Any, make: Factory) -> Any:
    """A user."""
    from kit.models import User

    return make(User, name="Ada Lovelace")


@pytest.fixture
def member(tenant: Any, user: Any, make: Factory) -> Any:
    """`user` as an owner of `org` (inside its tenant context)."""
    from kit.models import Member

    return make(Member, organization=tenant, user=user, role="owner")


@dataclass(frozen=True)
class SignedIn:
    """A user with a Better Auth session: the row, the token, and the cookie a browser would send."""

    user: Any
    session: Any
    token: str

    @property
    def cookie(self) -> str:
        """The `Cookie` header's value Better Auth reads this session from (signed with BETTER_AUTH_SECRET)."""
        from kit.betterauth import SESSION_COOKIE, session_cookie

        return f"{SESSION_COOKIE}={session_cookie(self.token)}"


@pytest.fixture
def signed_in(member: Any, make: Factory) -> SignedIn:
    """A member of `org` signed in: a Better Auth session row for them, active in `org`."""
    import secrets

    from kit.models import Session

    token = secrets.token_urlsafe(24)
    session = make(Session, user=member.user, token=token, active_organization=member.organization_id)
    return SignedIn(member.user, session, token)
