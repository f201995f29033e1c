"""The migration files on disk: names in order, and the sha256 of each file's bytes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from peewee_migrate.router import Router

from kit.project import load_project


@dataclass(frozen=True)
class MigrationFile:
    """One migration file."""

    name: str
    path: Path

    @property
    def checksum(self) -> str:
        """The sha256 of the file's bytes, hex."""
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def default_directory() -> Path:
    """Where migrations live: KIT_MIGRATIONS_DIR, else the project's (`[tool.kit] migrations`, `migrations/`)."""
    return load_project().migrations


def load(directory: Path) -> list[MigrationFile]:
    """The migration files in `directory`, in the order peewee-migrate applies them."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    names = sorted(p.stem for p in directory.iterdir() if Router.filemask.match(p.name))
    return [MigrationFile(name, directory / f"{name}.py") for name in names]
