"""The SaaS schema as peewee models, one module per domain: `from kit.models import User, DocumentChunk, ...`."""

from kit.models.ai import AiUsage, InsufficientCredits, OrgCredit
from kit.models.audit import AuditLog
from kit.models.auth import (
    Account,
    Invitation,
    InvitationError,
    Member,
    Organization,
    Session,
    TwoFactor,
    User,
    Verification,
)
from kit.models.base import BaseModel, TimestampedModel, mirror_defaults
from kit.models.billing import (
    Customer,
    Plan,
    PlanPrice,
    Subscription,
    Usage,
    WebhookEvent,
    current_plan,
    is_entitled,
    within_quota,
)
from kit.models.product import (
    Announcement,
    FeatureFlag,
    Referral,
    RoadmapItem,
    RoadmapVote,
    WaitlistEntry,
    WebhookDelivery,
    WebhookEndpoint,
)
from kit.models.rag import DocumentChunk, DocumentSource
from kit.models.settings import UserSettings

ALL_MODELS = [
    User, Organization, Session, Account, Verification, TwoFactor, Member, Invitation,
    Plan, PlanPrice, Customer, Subscription, Usage, WebhookEvent,
    UserSettings, AuditLog, AiUsage, OrgCredit, DocumentSource, DocumentChunk,
    Referral, WaitlistEntry, RoadmapItem, RoadmapVote, Announcement, FeatureFlag, WebhookEndpoint, WebhookDelivery,
]

for _model in ALL_MODELS:
    mirror_defaults(_model)

__all__ = [model.__name__ for model in ALL_MODELS] + [
    "ALL_MODELS", "BaseModel", "InsufficientCredits", "InvitationError", "TimestampedModel",
    "current_plan", "is_entitled", "within_quota",
]
