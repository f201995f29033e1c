"""Makes `pw_migrate` (run from the project root) use the kit's database: DATABASE_URL or the embedded server."""

import sys

from kit.config import KitError
from kit.db import database

try:
    database.connect(reuse_if_open=True)  # configure now, so a bad setting is one sentence, not a traceback
except KitError as exc:
    sys.exit(f"kit: error: {exc}")

DATABASE = database
