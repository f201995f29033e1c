"""The SaaS schema as peewee models, one module per domain: `from kit.models import User, DocumentChunk, ...`.

`project_models()` adds the models of the modules the project lists in `[tool.kit] models`.
"""

import importlib
import inspect
import sys

from peewee import Model

from kit.errors import ConfigError
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
from kit.project import load_project

ALL_MODELS = [
    User, Organization, Session, Account, Verification, TwoFactor, Member, Invitation,
    Plan, PlanPrice, Customer, Subscription, Usage, WebhookEvent,
    UserSettings, AuditLog, AiUsage, OrgCredit, DocumentSource, DocumentChunk,
    Referral, WaitlistEntry, RoadmapItem, RoadmapVote, Announcement, FeatureFlag, WebhookEndpoint, WebhookDelivery,
]

for _model in ALL_MODELS:
    mirror_defaults(_model)



def project_models(modules: tuple[str, ...] | None = None) -> list[type[Model]]:
    """The kit's models, then those of the project's model modules (`[tool.kit] models`), each once.

    A module's models are the peewee models it defines (or those named in its `__all__`).
    """
    project = load_project()
    if modules is None:
        modules = project.models
    if project.root is not None and str(project.root) not in sys.path:
        sys.path.insert(0, str(project.root))  # the project's own modules, as `python -m` would see them
    found: list[type[Model]] = list(ALL_MODELS)
    for name in modules:
        if name == "kit.models":
            continue
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"cannot import {name!r}, listed in [tool.kit] models: {exc}") from None
        names = getattr(module, "__all__", None)
        for attribute, value in inspect.getmembers(module, inspect.isclass):
            chosen = attribute in names if names is not None else value.__module__ == module.__name__
            if chosen and issubclass(value, Model) and value is not Model and value not in found:
                found.append(value)
    return found


__all__ = [model.__name__ for model in ALL_MODELS] + [
    "ALL_MODELS", "BaseModel", "InsufficientCredits", "InvitationError", "TimestampedModel",
    "current_plan", "is_entitled", "within_quota", "project_models",
]
