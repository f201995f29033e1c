"""Product: referrals, the waitlist, the public roadmap and its votes, announcements, feature flags,
and outbound webhooks (endpoints and their delivery log)."""

from __future__ import annotations

from peewee import BooleanField, Check, ForeignKeyField, IntegerField, ModelIndex, TextField
from playhouse.postgres_ext import BinaryJSONField, DateTimeTZField

from kit.models.auth import Organization, User
from kit.models.base import TimestampedModel, one_of

REFERRAL_STATUSES = ("pending", "signed_up", "converted", "rewarded")
WAITLIST_STATUSES = ("waiting", "invited", "joined")
ROADMAP_STATUSES = ("considering", "planned", "in_progress", "done")
ANNOUNCEMENT_KINDS = ("info", "feature", "maintenance", "incident")
DELIVERY_STATUSES = ("pending", "succeeded", "failed", "retrying")


class Referral(TimestampedModel):
    """A referral code handed out by a user, and who signed up with it."""

    referrer = ForeignKeyField(User, backref="referrals", on_delete="CASCADE")
    referred = ForeignKeyField(User, null=True, unique=True, backref="referred_by", on_delete="SET NULL")
    code = TextField(unique=True)
    email = TextField(null=True)
    status = TextField(default="pending", constraints=[one_of("status", REFERRAL_STATUSES)])
    reward_cents = IntegerField(default=0, constraints=[Check("reward_cents >= 0")])
    converted_at = DateTimeTZField(null=True)

    class Meta:
        table_name = "referrals"


class WaitlistEntry(TimestampedModel):
    """An email address waiting for access."""

    email = TextField(unique=True, constraints=[Check("email = lower(email)")])
    source = TextField(null=True)
    referral_code = TextField(null=True)
    status = TextField(default="waiting", constraints=[one_of("status", WAITLIST_STATUSES)])
    invited_at = DateTimeTZField(null=True)

    class Meta:
        table_name = "waitlist_entries"


class RoadmapItem(TimestampedModel):
    """A feature request or planned item on the public roadmap."""

    title = TextField()
    description = TextField(default="")
    status = TextField(default="considering", constraints=[one_of("status", ROADMAP_STATUSES)])
    created_by = ForeignKeyField(User, null=True, on_delete="SET NULL")

    class Meta:
        table_name = "roadmap_items"


class RoadmapVote(TimestampedModel):
    """A user's vote for a roadmap item: one per user and item."""

    item = ForeignKeyField(RoadmapItem, backref="votes", on_delete="CASCADE")
    user = ForeignKeyField(User, backref="roadmap_votes", on_delete="CASCADE")

    class Meta:
        table_name = "roadmap_votes"
        indexes = ((("item", "user"), True),)


class Announcement(TimestampedModel):
    """An in-app announcement, for everyone or for one organization, shown between two times."""

    organization = ForeignKeyField(Organization, null=True, backref="announcements", on_delete="CASCADE")
    title = TextField()
    body = TextField()
    kind = TextField(default="info", constraints=[one_of("kind", ANNOUNCEMENT_KINDS)])
    published_at = DateTimeTZField(null=True)
    expires_at = DateTimeTZField(null=True, constraints=[Check("expires_at IS NULL OR expires_at > published_at")])

    class Meta:
        table_name = "announcements"
        citus = "reference"  # global rows have no organization
        tenant = "organization"
        tenant_null = ("select",)  # an announcement for every organization: read by all, written by the owner


class FeatureFlag(TimestampedModel):
    """A feature flag for one organization, or for everyone when `organization` is null."""

    organization = ForeignKeyField(Organization, null=True, backref="feature_flags", on_delete="CASCADE")
    key = TextField()
    enabled = BooleanField(default=False)
    rollout_percent = IntegerField(default=100, constraints=[Check("rollout_percent BETWEEN 0 AND 100")])
    description = TextField(default="")

    class Meta:
        table_name = "feature_flags"
        citus = "reference"  # global rows have no organization
        tenant = "organization"
        tenant_null = ("select",)  # a global flag: read by every organization, set by the owner


# One flag per key and organization, and one global flag per key (NULLS NOT DISTINCT, PostgreSQL 15+).
FeatureFlag.add_index(ModelIndex(FeatureFlag, (FeatureFlag.organization, FeatureFlag.key), unique=True,
                                 nulls_distinct=False, name="feature_flags_organization_key"))


class WebhookEndpoint(TimestampedModel):
    """An organization's URL that receives outbound webhook events."""

    organization = ForeignKeyField(Organization, backref="webhook_endpoints", on_delete="CASCADE")
    url = TextField(constraints=[Check("url ~ '^https?://'")])
    secret = TextField()
    events = BinaryJSONField(index=False, default=list)
    enabled = BooleanField(default=True)
    description = TextField(default="")

    class Meta:
        table_name = "webhook_endpoints"
        tenant = "organization"


# A delivery references its endpoint through the organization (`WebhookDelivery`): this is that key.
WebhookEndpoint.add_index(ModelIndex(WebhookEndpoint, (WebhookEndpoint.organization, WebhookEndpoint.id), unique=True,
                                     name="webhook_endpoints_organization_id_id"))


class WebhookDelivery(TimestampedModel):
    """One event sent (or to be sent) to an endpoint: the delivery log.

    Its endpoint is referenced through the organization, `(organization_id, endpoint_id)` (migration
    011): a delivery names only an endpoint of its own organization.
    """

    organization = ForeignKeyField(Organization, backref="webhook_deliveries", on_delete="CASCADE",
                                   index=False)  # its index: below, as migration 011 builds it (CONCURRENTLY)
    endpoint = ForeignKeyField(WebhookEndpoint, backref="deliveries", on_delete="CASCADE")
    event_type = TextField()
    payload = BinaryJSONField(index=False, default=dict)
    status = TextField(default="pending", constraints=[one_of("status", DELIVERY_STATUSES)])
    attempts = IntegerField(default=0, constraints=[Check("attempts >= 0")])
    response_code = IntegerField(null=True, constraints=[Check("response_code BETWEEN 100 AND 599")])
    next_attempt_at = DateTimeTZField(null=True, index=True)
    delivered_at = DateTimeTZField(null=True)

    class Meta:
        table_name = "webhook_deliveries"
        tenant = "organization"


WebhookDelivery.add_index(ModelIndex(WebhookDelivery, (WebhookDelivery.organization,)))
