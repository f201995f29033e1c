"""Binary COPY into any table: `copy_rows` (all or nothing) and `CopyWriter` (streamed, chainable).

- `encoders`: the wire format of each scalar PostgreSQL type;
- `writer`: rows encoded a column at a time here, sent by a worker thread; errors name the row.

Fields that know their own binary form (pgvector's) plug in through `copy_cells`; see `writer`.
"""

from kit.copy.writer import CopyWriter, copy_rows
from kit.errors import CopyRowError

__all__ = ["CopyRowError", "CopyWriter", "copy_rows"]
