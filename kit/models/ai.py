"""AI: per-organization token usage and cost, and credit balances that never go below zero."""

from __future__ import annotations

from typing import Any

from peewee import SQL, BigIntegerField, Check, DecimalField, ForeignKeyField, IntegerField, TextField, fn

from kit.db.prepared import Param
from kit.errors import ArgumentError, InsufficientCredits, NotFound
from kit.models.auth import Organization, User
from kit.models.base import BaseModel, TimestampedModel, id_of, prepared, returned
from kit.tenancy import tenant


class AiUsage(BaseModel):
    """One AI call's token usage and cost, for an organization (and the user who made it)."""

    organization = ForeignKeyField(Organization, backref="ai_usage", on_delete="CASCADE")
    user = ForeignKeyField(User, null=True, on_delete="SET NULL")
    model = TextField()
    operation = TextField(default="chat")
    input_tokens = IntegerField(default=0, constraints=[Check("input_tokens >= 0")])
    output_tokens = IntegerField(default=0, constraints=[Check("output_tokens >= 0")])
    cost_usd = DecimalField(max_digits=12, decimal_places=6, default=0, constraints=[Check("cost_usd >= 0")])

    class Meta:
        table_name = "ai_usage"
        tenant = "organization"
        partition_by = "created_at"  # monthly partitions (migration 008, `kit maintain`); key (id, created_at)


def _consume(credit: Any) -> Any:
    """The balance less `amount` where it covers it (`OrgCredit.consume`), the new balance back."""
    return (credit.update({credit.balance: credit.balance - Param("amount"), credit.updated_at: fn.now()})
            .where((credit.organization == Param("org")) & (credit.balance >= Param("amount")))
            .returning(credit.balance))


class OrgCredit(TimestampedModel):
    """An organization's AI credit balance: one row per organization, never below zero."""

    organization = ForeignKeyField(Organization, unique=True, backref="credits", on_delete="CASCADE")
    balance = BigIntegerField(default=0, constraints=[Check("balance >= 0")])

    class Meta:
        table_name = "org_credits"
        tenant = "organization"

    @staticmethod
    def _amount(amount: int) -> int:
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise ArgumentError(f"credit amount must be a positive whole number, got {amount!r}")
        return amount

    @classmethod
    def grant(cls, organization: Any, amount: int) -> int:
        """Add `amount` credits (creating the balance if needed); return the new balance."""
        amount = cls._amount(amount)
        org_id = id_of(organization)
        query = cls.insert(organization=org_id, balance=amount).on_conflict(
            conflict_target=[cls.organization],
            update={cls.balance: cls.balance + amount, cls.updated_at: SQL("EXCLUDED.updated_at")},  # no function:
            # Citus takes only IMMUTABLE ones in DO UPDATE SET; the row offered was stamped now
        )
        with tenant(org_id):
            return returned(query, cls.balance)[0]

    @classmethod
    def consume(cls, organization: Any, amount: int) -> int:
        """Take `amount` credits in one statement; the new balance (else InsufficientCredits, or NotFound)."""
        amount = cls._amount(amount)
        org_id = id_of(organization)
        with tenant(org_id):
            rows = prepared(cls, _consume).execute(org=org_id, amount=amount).fetchall()
            have = None if rows else cls.select(cls.balance).where(cls.organization == org_id).scalar()
            if have is None and not rows and not Organization.select().where(Organization.id == org_id).exists():
                raise NotFound(f"organization {org_id} does not exist, or is not this context's to see; no credits "
                               "were taken")
        if not rows:
            raise InsufficientCredits(f"organization {org_id} has {have or 0} credits, {amount} were asked for")
        return rows[0][0]

    @classmethod
    def balance_of(cls, organization: Any) -> int:
        """The organization's current balance (0 when it has none)."""
        org_id = id_of(organization)
        with tenant(org_id):
            return cls.select(cls.balance).where(cls.organization == org_id).scalar() or 0
