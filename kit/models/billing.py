"""Billing: plans and their prices, customers, subscriptions, usage metering, payment webhook events."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from peewee import SQL, BigIntegerField, BooleanField, Check, DateField, ForeignKeyField, IntegerField, TextField, fn
from playhouse.postgres_ext import BinaryJSONField, DateTimeTZField

from kit.db.prepared import Param
from kit.errors import ArgumentError
from kit.models.auth import Organization
from kit.models.base import BaseModel, TimestampedModel, id_of, one_of, prepared, utcnow
from kit.tenancy import tenant

INTERVALS = ("month", "year")
SUBSCRIPTION_STATUSES = (
    "trialing", "active", "past_due", "canceled", "incomplete", "incomplete_expired", "unpaid", "paused",
)
LIVE_STATUSES = ("trialing", "active", "past_due")  # the subscription still grants its plan
WEBHOOK_EVENT_STATUSES = ("processing", "processed", "failed")
FREE_PLAN_SLUG = "free"


class Plan(BaseModel):
    """A plan: what an organization may do (`entitlements`) and its list price in cents."""

    slug = TextField(unique=True)
    name = TextField()
    price = IntegerField(default=0, constraints=[Check("price >= 0")])
    entitlements = BinaryJSONField(
        index=False,
        default=dict,
        constraints=[Check("jsonb_typeof(entitlements) = 'object'")],
    )
    active = BooleanField(default=True)

    class Meta:
        table_name = "plans"
        citus = "reference"

    def grants(self, feature: str) -> bool:
        """Whether this plan turns `feature` on (true, or a quota above zero)."""
        value = (self.entitlements or {}).get(feature)
        return value is True or (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0)

    def quota(self, name: str) -> int | float | None:
        """This plan's numeric limit `name` (None: not granted; -1 means unlimited by convention)."""
        value = (self.entitlements or {}).get(name)
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class PlanPrice(TimestampedModel):
    """A price of a plan for one billing interval and currency, as known to the payment provider."""

    plan = ForeignKeyField(Plan, backref="prices", on_delete="CASCADE")
    interval = TextField(constraints=[one_of("interval", INTERVALS)])
    currency = TextField(default="usd", constraints=[Check("currency ~ '^[a-z]{3}$'")])
    amount = IntegerField(constraints=[Check("amount >= 0")])  # cents
    provider_price_id = TextField(unique=True, null=True)
    active = BooleanField(default=True)

    class Meta:
        table_name = "plan_prices"
        citus = "reference"
        indexes = ((("plan", "interval", "currency"), True),)


class Customer(TimestampedModel):
    """An organization as a customer of the payment provider."""

    organization = ForeignKeyField(Organization, unique=True, backref="customer", on_delete="CASCADE")
    provider = TextField(default="stripe")
    provider_customer_id = TextField(index=True)  # unique per organization (below): the webhook path looks it up
    email = TextField(null=True)

    class Meta:
        table_name = "customers"
        tenant = "organization"
        indexes = ((("organization", "provider_customer_id"), True),)  # unique keys go through the organization


class Subscription(TimestampedModel):
    """An organization's subscription to a plan, mirrored from the payment provider."""

    organization = ForeignKeyField(Organization, backref="subscriptions", on_delete="CASCADE")
    plan = ForeignKeyField(Plan, backref="subscriptions", on_delete="RESTRICT")
    price = ForeignKeyField(PlanPrice, null=True, on_delete="SET NULL")
    status = TextField(constraints=[one_of("status", SUBSCRIPTION_STATUSES)])
    provider_subscription_id = TextField(index=True, null=True)  # unique per organization (Meta.indexes)
    current_period_start = DateTimeTZField(null=True)
    current_period_end = DateTimeTZField(null=True)
    cancel_at_period_end = BooleanField(default=False)
    trial_ends_at = DateTimeTZField(null=True)
    canceled_at = DateTimeTZField(null=True)

    class Meta:
        table_name = "subscriptions"
        tenant = "organization"
        indexes = ((("organization", "provider_subscription_id"), True),)


def _increment(usage: Any) -> Any:
    """Add `quantity` to the period's counter, making it if needed (`Usage.increment`), the new total back."""
    return usage.insert({
        usage.organization: Param("org"), usage.metric: Param("metric"), usage.period_start: Param("period"),
        usage.quantity: Param("quantity"), usage.created_at: fn.now(), usage.updated_at: fn.now(),
    }).on_conflict(
        conflict_target=[usage.organization, usage.metric, usage.period_start],
        update={usage.quantity: usage.quantity + SQL("EXCLUDED.quantity"),
                usage.updated_at: SQL("EXCLUDED.updated_at")},  # no function here: Citus takes only IMMUTABLE ones
    ).returning(usage.quantity)


class Usage(TimestampedModel):
    """A metered quantity per organization, metric and period (the first day of the period)."""

    organization = ForeignKeyField(Organization, backref="usage", on_delete="CASCADE")
    metric = TextField()
    period_start = DateField()
    quantity = BigIntegerField(default=0, constraints=[Check("quantity >= 0")])

    class Meta:
        table_name = "usage"
        tenant = "organization"
        indexes = ((("organization", "metric", "period_start"), True),)

    @classmethod
    def increment(cls, organization: Any, metric: str, quantity: int = 1, period_start: dt.date | None = None) -> int:
        """Add `quantity` to this period's counter in one atomic upsert; return the new total."""
        if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 0:
            raise ArgumentError(f"usage quantity must be a whole number >= 0, got {quantity!r}")
        period_start = period_start or utcnow().date().replace(day=1)
        org_id = id_of(organization)
        with tenant(org_id):
            cursor = prepared(cls, _increment).execute(org=org_id, metric=metric, period=period_start,
                                                       quantity=quantity)
            return cursor.fetchone()[0]


class WebhookEvent(TimestampedModel):
    """A payment provider's event, recorded once by its id so that it is processed once."""

    provider = TextField(default="stripe")
    event_id = TextField(unique=True)
    type = TextField()
    payload = BinaryJSONField(index=False, default=dict)
    status = TextField(default="processing", constraints=[one_of("status", WEBHOOK_EVENT_STATUSES)])
    processed_at = DateTimeTZField(null=True)
    error = TextField(null=True)

    class Meta:
        table_name = "webhook_events"
        citus = "reference"

    @classmethod
    def process_once(cls, event_id: str, type: str, payload: dict, handler: Callable[[WebhookEvent], Any],
                     provider: str = "stripe") -> bool:
        """Record the event and run `handler` on it, once per event id; False if it was already recorded.

        Recording and handling share one transaction: if the handler fails, the record is rolled back
        too, so the provider's retry processes it again. A concurrent duplicate waits for the first
        and then does nothing.
        """
        with cls._meta.database.atomic():
            inserted = cls.insert(provider=provider, event_id=event_id, type=type, payload=payload).on_conflict(
                conflict_target=[cls.event_id], action="IGNORE"
            ).returning(cls.id).execute()
            rows = list(inserted)
            if not rows:
                return False
            event = cls.get_by_id(rows[0].id)
            handler(event)
            cls.update(status="processed", processed_at=utcnow()).where(cls.id == event.id).execute()
            return True


def current_plan(organization: Any) -> Plan | None:
    """The plan of the organization's live subscription (latest first), else the free plan, else None."""
    org_id = id_of(organization)
    with tenant(org_id):
        subscription = (
            Subscription.select(Subscription.plan)
            .where((Subscription.organization == org_id) & (Subscription.status.in_(LIVE_STATUSES)))
            .order_by(Subscription.created_at.desc())
            .first()
        )
    if subscription is not None:
        return Plan.get_by_id(subscription.plan_id)
    return Plan.get_or_none(Plan.slug == FREE_PLAN_SLUG)


def is_entitled(organization: Any, feature: str) -> bool:
    """Whether the organization's current plan grants `feature`."""
    plan = current_plan(organization)
    return plan is not None and plan.grants(feature)


def within_quota(organization: Any, name: str, used: int | float) -> bool:
    """Whether `used` stays within the current plan's quota `name` (-1: unlimited; no quota: False)."""
    plan = current_plan(organization)
    limit = plan.quota(name) if plan is not None else None
    return limit is not None and (limit == -1 or used < limit)
