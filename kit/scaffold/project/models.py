"""Your own tables, beside the kit's (`kit.models`). `[tool.kit] models` in pyproject.toml lists this module.

After a change here: `pw_migrate create --auto NAME`, review the file it writes, `pw_migrate migrate`.
"""

from peewee import Check, ForeignKeyField, IntegerField, TextField

from kit.models import Organization
from kit.models.base import TimestampedModel


class Project(TimestampedModel):
    """An example of your own table: a project of an organization (rename or remove it as you like)."""

    organization = ForeignKeyField(Organization, backref="projects", on_delete="CASCADE")
    name = TextField()
    stars = IntegerField(default=0, constraints=[Check("stars >= 0", name="projects_stars_not_negative")])

    class Meta:
        table_name = "projects"
        tenant = "organization"  # row-level security: each organization sees its own projects only
