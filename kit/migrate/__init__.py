"""Safe migration operations on top of peewee-migrate, split by responsibility as in Django:

- `loader`: the migration files and their checksums;
- `history`: what was applied (peewee-migrate's table, plus the kit's checksums);
- `lock`: the advisory lock that keeps runs of `kit migrate` and `pw_migrate` from overlapping;
- `executor`: apply (each migration under the lock), status, verify, roll back, operator recovery;
- `pwmigrate`: what plain `pw_migrate` gets from `migrations/conf.py` (the lock, checksums);
- `schema`: the live schema compared with the models (drift);
- `autogen` and `operations`: what `pw_migrate create --auto` needs to write the kit's fields and indexes,
  and the safe forms for a table with rows;
- `render`, `lint`, `safe`, `steps`: what a migration will run, the rules it is checked against
  (`kit migrate lint`), the safe forms (a planner), and the steps that run after its transaction.
"""

from kit.migrate.executor import MigrationError, State, apply, resolve, rollback, status, verify

__all__ = ["MigrationError", "State", "apply", "resolve", "rollback", "status", "verify"]
