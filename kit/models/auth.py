"""Auth: users, sessions, accounts, verifications, two-factor, organizations, members, invitations.

Columns follow Better Auth's core schema and its organization and two-factor plugins, in snake_case
(configure Better Auth with `usePlural: true` and snake_case field names, and let the database
generate ids), so a TypeScript front end using Better Auth can share these tables.
"""

from __future__ import annotations

from typing import Any

from peewee import BooleanField, ForeignKeyField, TextField
from playhouse.postgres_ext import BinaryJSONField, DateTimeTZField

from kit.models.base import BaseModel, TimestampedModel, one_of, utcnow

MEMBER_ROLES = ("owner", "admin", "member")
INVITATION_STATUSES = ("pending", "accepted", "rejected", "canceled")


class InvitationError(Exception):
    """An invitation cannot be accepted (expired, revoked, already used by someone else)."""


class User(TimestampedModel):
    """A person who can sign in."""

    name = TextField()
    email = TextField(unique=True)
    email_verified = BooleanField(default=False)
    image = TextField(null=True)
    two_factor_enabled = BooleanField(default=False)

    class Meta:
        table_name = "users"


class Organization(TimestampedModel):
    """A tenant: the unit that owns data, members and a subscription."""

    name = TextField()
    slug = TextField(unique=True)
    logo = TextField(null=True)
    metadata = BinaryJSONField(index=False, null=True)

    class Meta:
        table_name = "organizations"


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
        indexes = ((("provider_id", "account_id"), True),)


class Verification(TimestampedModel):
    """A one-time value (email verification, password reset) for an identifier."""

    identifier = TextField(index=True)
    value = TextField()
    expires_at = DateTimeTZField()

    class Meta:
        table_name = "verifications"


class TwoFactor(BaseModel):
    """A user's TOTP secret and backup codes."""

    user = ForeignKeyField(User, backref="two_factors", on_delete="CASCADE")
    secret = TextField()
    backup_codes = TextField()

    class Meta:
        table_name = "two_factors"


class Member(TimestampedModel):
    """A user's membership of an organization, with a role."""

    organization = ForeignKeyField(Organization, backref="members", on_delete="CASCADE")
    user = ForeignKeyField(User, backref="memberships", on_delete="CASCADE")
    role = TextField(default="member", constraints=[one_of("role", MEMBER_ROLES)])

    class Meta:
        table_name = "members"
        indexes = ((("organization", "user"), True),)


class Invitation(TimestampedModel):
    """An invitation to join an organization, accepted once."""

    organization = ForeignKeyField(Organization, backref="invitations", on_delete="CASCADE")
    email = TextField(index=True)
    role = TextField(default="member", constraints=[one_of("role", MEMBER_ROLES)])
    status = TextField(default="pending", constraints=[one_of("status", INVITATION_STATUSES)])
    expires_at = DateTimeTZField()
    inviter = ForeignKeyField(User, null=True, backref="sent_invitations", on_delete="SET NULL")

    class Meta:
        table_name = "invitations"

    @classmethod
    def accept(cls, invitation_id: Any, user: User | Any) -> Member:
        """Accept for `user`: create the membership once, however many times this runs at once."""
        with cls._meta.database.atomic():
            invitation = cls.select().where(cls.id == invitation_id).for_update().get_or_none()
            if invitation is None:
                raise InvitationError(f"invitation {invitation_id} does not exist")
            user_id = getattr(user, "id", user)
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
            cls.update(status="accepted").where(cls.id == invitation.id).execute()
            return Member.get(organization=invitation.organization_id, user=user_id)

    @classmethod
    def revoke(cls, invitation_id: Any) -> bool:
        """Cancel a pending invitation; False if it was not pending."""
        query = cls.update(status="canceled").where((cls.id == invitation_id) & (cls.status == "pending"))
        return bool(query.execute())
