"""Makes `pw_migrate` (run from the project root) use the kit's database: DATABASE_URL or the embedded server.

Through `kit.migrate.pwmigrate` the run takes the kit's migration lock and records each migration's
checksum, and `pw_migrate create --auto` learns the kit's fields and indexes.
"""

import sys

from kit.errors import KitError
from kit.migrate.executor import IGNORED_MODELS
from kit.migrate.pwmigrate import database_for_pw_migrate

try:
    DATABASE = database_for_pw_migrate()
except KitError as exc:
    sys.exit(f"kit: error: {exc}")

IGNORE = IGNORED_MODELS  # the abstract bases in kit.models are not tables
