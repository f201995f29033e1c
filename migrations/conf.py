"""Makes `pw_migrate` (run from the project root) use the kit's database: DATABASE_URL or the embedded server.

It also teaches `pw_migrate create --auto` the kit's fields and indexes (kit.migrate.autogen).
"""

import sys

from kit.config import KitError
from kit.db import database
from kit.migrate.autogen import register
from kit.migrate.executor import IGNORED_MODELS, require_extension

register()

try:
    database.connect(reuse_if_open=True)  # configure now, so a bad setting is one sentence, not a traceback
    require_extension(database)
except KitError as exc:
    sys.exit(f"kit: error: {exc}")

DATABASE = database
IGNORE = IGNORED_MODELS  # the abstract bases in kit.models are not tables
