"""Audit: an append-only security log. The database itself refuses UPDATE and DELETE on it (a trigger
added by the migrations), so entries cannot be edited or removed, not even by the application.

Organization and actor are plain UUID columns, not foreign keys: an audit entry outlives the
organization or user it mentions.
"""

from __future__ import annotations

import uuid
from typing import Any

from peewee import TextField, UUIDField
from playhouse.postgres_ext import BinaryJSONField

from kit.models.base import BaseModel, id_of
from kit.tenancy import tenant


class AuditLog(BaseModel):
    """One security-relevant event: who did what to which target, from where."""

    organization_id = UUIDField(null=True, index=True)
    actor_id = UUIDField(null=True, index=True)
    action = TextField(index=True)
    target_type = TextField(null=True)
    target_id = TextField(null=True)
    ip = TextField(null=True)
    user_agent = TextField(null=True)
    metadata = BinaryJSONField(index=False, default=dict)

    class Meta:
        table_name = "audit_logs"
        citus = "local"  # platform events have no organization
        append_only = True
        tenant = "organization_id"
        tenant_null = ("insert",)  # an event of no organization is recorded; read through all_tenants()
        partition_by = "created_at"  # monthly partitions (migration 008, `kit maintain`); key (id, created_at)

    @classmethod
    def record(cls, action: str, organization: Any = None, actor: Any = None, target: Any = None,
               **details: Any) -> AuditLog:
        """Append an entry; `target` is a model instance (type and id are taken from it) or None."""
        target_type = target._meta.table_name if target is not None and hasattr(target, "_meta") else None
        org_id = id_of(organization, optional=True)
        entry = cls(
            action=action,
            organization_id=org_id,
            actor_id=id_of(actor, "user", optional=True),
            target_type=target_type,
            target_id=str(target.id) if target_type else (str(target) if target is not None else None),
            ip=details.pop("ip", None),
            user_agent=details.pop("user_agent", None),
            metadata=details,
        )
        if org_id is not None:
            with tenant(org_id):
                entry.save(force_insert=True)
            return entry
        # An entry of no organization is recorded, but it is not the application's to read back (the
        # policies let every tenant insert it, none select it), so it is sent without RETURNING.
        entry.id = uuid.uuid4()
        cls.insert({cls._meta.fields[name]: value for name, value in entry.__data__.items()}).returning().execute()
        return entry
