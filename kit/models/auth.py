"""Auth: users, sessions, accounts, verifications, two-factor, organizations, members, invitations.

Columns are Better Auth 1.7's core schema and its organization and two-factor plugins, in plural
snake_case, so a TypeScript app running Better Auth shares these tables with Python services.
`interop/better-auth/kit-schema.mjs` maps Better Auth's names onto them; the test suite runs the real
Better Auth against them. Where Better Auth's rules differ from what a database would pick, its
rules win: `organizations.metadata` is JSON kept as text (Better Auth reads a string), roles are
comma-separated lists of role names, and an invitation always has its inviter.
"""

from __future__ import annotations

from typing import Any

from peewee import SQL, BooleanField, Check, Expression, ForeignKeyField, IntegerField, NodeList, TextField, fn
from playhouse.postgres_ext import DateTimeTZField

from kit.errors import InvitationError, InvitationNotFound
from kit.models.base import BaseModel, JSONTextField, TimestampedModel, one_of, utcnow
from kit.tenancy import all_tenants, tenant

DEFAULT_ROLES = ("owner", "admin", "member")  # Better Auth's built-in roles; apps may define more
INVITATION_STATUSES = ("pending", "accepted", "rejected", "canceled")
# One or more role names, comma-separated as Better Auth stores them ("admin,member"). A role name is
# words separated by single spaces (Better Auth trims each name): no empty names, no stray commas or
# spaces, no control characters, at most 200 characters in all.
_NAME = r"[^,[:space:][:cntrl:]]+( [^,[:space:][:cntrl:]]+)*"
ROLES_PATTERN = rf"^{_NAME}(,{_NAME})*$"


def role_list() -> SQL | NodeList:
    """A CHECK constraint: `role` is a comma-separated list of role names, as Better Auth writes it."""
    return Check(f"role ~ '{ROLES_PATTERN}' AND length(role) <= 200")


def parse_roles(role: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Role names in a stored role value or a list of them, trimmed, empty names dropped."""
    parts = role.split(",") if isinstance(role, str) else [p for r in role for p in r.split(",")]
    return tuple(p.strip() for p in parts if p.strip())



class User(TimestampedModel):
    """A person who can sign in."""

    name = TextField()
    email = TextField(unique=True)
    email_verified = BooleanField(default=False)
    image = TextField(null=True)
    two_factor_enabled = BooleanField(default=False)

    class Meta:
        table_name = "users"
        citus = "reference"  # pointed at by every organization's rows
        better_auth = True


class Organization(TimestampedModel):
    """A tenant: the unit that owns data, members and a subscription."""

    name = TextField()
    slug = TextField(unique=True)
    logo = TextField(null=True)
    metadata = JSONTextField(null=True, constraints=[Check("metadata IS JSON OBJECT")])  # a dict in Python

    class Meta:
        table_name = "organizations"
        citus = "reference"  # small, read by every node; its slug unique across all
        better_auth = True
        tenant = "id"  # an organization is its own tenant: writable only as itself
        tenant_open = ("select", "insert")  # found by slug before a request has a tenant; created by anyone


class Session(TimestampedModel):
    """A signed-in browser or device."""

    user = ForeignKeyField(User, backref="sessions", on_delete="CASCADE")
    token = TextField(unique=True)
    expires_at = DateTimeTZField()
    ip_address = TextField(null=True)
    user_agent = TextField(null=True)
    active_organization = ForeignKeyField(Organization, null=True, on_delete="SET NULL")

    class Meta:
        table_name = "sessions"
        better_auth = True


class Account(TimestampedModel):
    """A way to sign in: a password (stored hashed) or an OAuth provider's account."""

    user = ForeignKeyField(User, backref="accounts", on_delete="CASCADE")
    account_id = TextField()
    provider_id = TextField()
    access_token = TextField(null=True)
    refresh_token = TextField(null=True)
    id_token = TextField(null=True)
    access_token_expires_at = DateTimeTZField(null=True)
    refresh_token_expires_at = DateTimeTZField(null=True)
    scope = TextField(null=True)
    password = TextField(null=True)  # a password hash, never the password

    class Meta:
        table_name = "accounts"
        better_auth = True
        indexes = ((("provider_id", "account_id"), True),)


class Verification(TimestampedModel):
    """A one-time value (email verification, password reset) for an identifier."""

    identifier = TextField(index=True)
    value = TextField()
    expires_at = DateTimeTZField()

    class Meta:
        table_name = "verifications"
        better_auth = True


class TwoFactor(BaseModel):
    """A user's TOTP secret and backup codes, encrypted with Better Auth's secret, and failed attempts."""

    user = ForeignKeyField(User, backref="two_factors", on_delete="CASCADE")
    secret = TextField(index=True)
    backup_codes = TextField()
    verified = BooleanField(default=True, null=True)  # False until the first TOTP code is checked
    failed_verification_count = IntegerField(default=0, null=True)
    locked_until = DateTimeTZField(null=True)

    class Meta:
        table_name = "two_factors"
        better_auth = True


class Member(TimestampedModel):
    """A user's membership of an organization, with a role."""

    organization = ForeignKeyField(Organization, backref="members", on_delete="CASCADE")
    user = ForeignKeyField(User, backref="memberships", on_delete="CASCADE")
    role = TextField(default="member", constraints=[role_list()])  # "owner", or "admin,member"

    class Meta:
        table_name = "members"
        better_auth = True
        tenant = "organization"
        indexes = ((("organization", "user"), True),)

    @property
    def roles(self) -> tuple[str, ...]:
        """The member's role names."""
        return parse_roles(self.role)

    def has_role(self, *roles: str) -> bool:
        """Whether the member holds any of `roles`."""
        return any(r in self.roles for r in roles)

    @classmethod
    def holding(cls, role: str) -> Expression:
        """A condition for `where()`: the member holds `role` (alone or among others)."""
        return fn.array_position(fn.string_to_array(cls.role, ","), role).is_null(False)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def same_address(one: str, other: str) -> bool:
    """Whether two email addresses are the same mailbox as an invitation compares them: equal but for ASCII case.

    Only A-Z fold: `str.lower()` and Unicode case folding also map compatibility characters onto ASCII
    letters (the Kelvin sign U+212A to k, the long s to s), so an address spelled with one would pass
    for another person's.
    """
    return one.translate(_ASCII_LOWER) == other.translate(_ASCII_LOWER)


class Invitation(TimestampedModel):
    """An invitation to join an organization, accepted once."""

    organization = ForeignKeyField(Organization, backref="invitations", on_delete="CASCADE")
    email = TextField(index=True)
    role = TextField(default="member", constraints=[role_list()])
    status = TextField(default="pending", constraints=[one_of("status", INVITATION_STATUSES)])
    expires_at = DateTimeTZField()
    inviter = ForeignKeyField(User, backref="sent_invitations", on_delete="CASCADE")

    class Meta:
        table_name = "invitations"
        better_auth = True
        tenant = "organization"

    @classmethod
    def accept(cls, invitation_id: Any, user: User | Any) -> Member:
        """Accept for `user`, whose email must be the invited one: the membership is created once.

        The invitee is not yet in the organization, so the invitation (found by its id, an unguessable
        UUID sent to the invited address) names the tenant: that one lookup goes through
        `all_tenants()`, the rest runs as the invitation's organization.
        """
        missing = InvitationNotFound(f"invitation {invitation_id} does not exist")
        with all_tenants():
            organization_id = cls.select(cls.organization).where(cls.id == invitation_id).scalar()
        if organization_id is None:
            raise missing
        with tenant(organization_id), cls._meta.database.atomic():
            # naming the organization routes the locking read to the tenant's shard on Citus, which
            # refuses FOR UPDATE across shards (docs/scaling.md)
            invitation = cls.select().where((cls.organization == organization_id) & (cls.id == invitation_id)
                                            ).for_update().get_or_none()
            if invitation is None:
                raise missing
            user_id = getattr(user, "id", user)
            email = User.select(User.email).where(User.id == user_id).scalar()
            if email is None:
                raise InvitationNotFound(f"user {user_id} does not exist")
            if not same_address(email, invitation.email):
                raise InvitationError(f"invitation {invitation_id} is for another email address, not {email}")
            if invitation.status == "accepted":
                member = Member.get_or_none(organization=invitation.organization_id, user=user_id)
                if member is None:
                    raise InvitationError(f"invitation {invitation_id} was already accepted by someone else")
                return member
            if invitation.status != "pending":
                raise InvitationError(f"invitation {invitation_id} was {invitation.status}; it cannot be accepted")
            if invitation.expires_at <= utcnow():
                expired = f"{invitation.expires_at:%Y-%m-%d %H:%M %Z}"
                raise InvitationError(f"invitation {invitation_id} expired at {expired}")
            Member.insert(organization=invitation.organization_id, user=user_id, role=invitation.role).on_conflict(
                conflict_target=[Member.organization, Member.user], action="IGNORE"
            ).execute()
            cls.update(status="accepted").where((cls.organization == organization_id) & (cls.id == invitation.id)
                                                ).execute()
            return Member.get(organization=invitation.organization_id, user=user_id)

    @classmethod
    def revoke(cls, invitation_id: Any) -> bool:
        """Cancel a pending invitation; False if it was not pending."""
        query = cls.update(status="canceled").where((cls.id == invitation_id) & (cls.status == "pending"))
        return bool(query.execute())
