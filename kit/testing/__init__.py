"""Testing a project built on the kit: a pytest plugin, tenant fixtures and factories of rows.

- `plugin`: the fixtures (`db`, `transactional_db`, `make`, `org`, `other_org`, `tenant`, `user`,
  `member`, `signed_in`), loaded by pytest through the kit's `pytest11` entry point;
- `template`: the run's database, cloned from a template migrated once per set of migrations;
- `factories`: `Factory`, rows of any model made by name with only what a test cares about.

The how-to and the reference: docs/testing.md.
"""

from kit.testing.factories import Factory, Fake, fake, seed_of

__all__ = ["Factory", "Fake", "fake", "seed_of"]
