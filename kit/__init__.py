"""kit: a Peewee data layer for SaaS backends on PostgreSQL and pgvector.

Importing the package never connects; the first query does (see `kit.db`).
"""

__version__ = "0.1.0"
