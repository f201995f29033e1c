"""Settings: one row of preferences per user."""

from __future__ import annotations

from peewee import BooleanField, ForeignKeyField, TextField
from playhouse.postgres_ext import BinaryJSONField

from kit.models.auth import User
from kit.models.base import TimestampedModel, one_of

THEMES = ("light", "dark", "system")


class UserSettings(TimestampedModel):
    """A user's preferences (one row per user)."""

    user = ForeignKeyField(User, unique=True, backref="settings", on_delete="CASCADE")
    theme = TextField(default="system", constraints=[one_of("theme", THEMES)])
    locale = TextField(default="en")
    timezone = TextField(default="UTC")
    email_notifications = BooleanField(default=True)
    preferences = BinaryJSONField(index=False, default=dict)

    class Meta:
        table_name = "user_settings"
