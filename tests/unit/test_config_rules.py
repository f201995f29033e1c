"""Settings and secrets (kit.config): every variable read is documented, bad values are one sentence, no password shows."""

from __future__ import annotations

import inspect
import re

import pytest

from kit import ConfigError, config
from kit.config import VARIABLES, Settings, check_database_url, load_settings, mask_password


def test_every_variable_the_code_reads_is_in_the_table_and_every_row_is_read():
    source = inspect.getsource(config) + inspect.getsource(__import__("kit.project", fromlist=["x"]))
    read = set(re.findall(r'"((?:DATABASE|KIT)_[A-Z_]+)"', inspect.getsource(config.load_settings)))
    rows = {v.name for v in VARIABLES}
    assert read <= rows, f"read but not documented: {read - rows}"
    assert all(name in source or name.startswith(("DATABASE_ADMIN", "KIT_", "BETTER_AUTH")) for name in rows)
    assert all(v.field is None or hasattr(Settings, v.field) for v in VARIABLES)


def test_the_table_shows_the_defaults_the_settings_use():
    table = config.variables_markdown()
    assert f"| `DATABASE_POOL_MAX` | `{Settings.pool_max}` |" in table
    assert f"| `DATABASE_STATEMENT_TIMEOUT` | `{Settings.statement_timeout_ms}` |" in table


@pytest.mark.parametrize("env, said", [
    ({"DATABASE_POOL_MAX": "ten"}, "DATABASE_POOL_MAX must be a whole number, got 'ten'"),
    ({"DATABASE_POOL_MAX": "0"}, "DATABASE_POOL_MAX must be at least 1, got 0"),
    ({"DATABASE_POOL_MIN": "-1"}, "DATABASE_POOL_MIN must not be negative, got -1"),
    ({"DATABASE_POOL_MIN": "5", "DATABASE_POOL_MAX": "2"}, "DATABASE_POOL_MIN (5) must not be greater"),
    ({"DATABASE_POOLER": "odyssey"}, "DATABASE_POOLER must be pgbouncer or unset, got 'odyssey'"),
    ({"DATABASE_LOCK_TIMEOUT": "0"}, "DATABASE_LOCK_TIMEOUT must be at least 1 ms"),
    ({"DATABASE_LOCK_TIMEOUT": "5000", "DATABASE_LOCK_BUDGET": "100"}, "DATABASE_LOCK_BUDGET (100 ms) must be at"),
    ({"DATABASE_OWNER_URL": "postgresql://o@h/db"}, "DATABASE_OWNER_URL is set but DATABASE_URL is not"),
    ({"DATABASE_URL": "mysql://u:pw@h/db"}, "DATABASE_URL must start with postgresql:// or postgres://"),
])
def test_a_bad_setting_is_one_sentence_naming_the_variable(env, said, tmp_path):
    with pytest.raises(ConfigError) as raised:
        load_settings({"KIT_DATA_DIR": str(tmp_path), **env})
    assert str(raised.value).startswith(said) and "\n" not in str(raised.value)


SECRET = "s3cr#t/pw@x"


@pytest.mark.parametrize("text", [
    "postgresql://u:s3cretpw@h/db",
    "postgresql://u:s3cr%40t%2Fpw@h/db",
    "host=h password=s3cretpw dbname=db",
    "host=h password='s3cret pw' dbname=db",
    "postgresql://u@h/db?password=s3cretpw&sslmode=require",
    "postgresql://u@h/db?sslpassword=s3cretpw",
    "could not connect to postgresql://u:s3cretpw@h/db: timeout",
])
def test_no_password_survives_masking(text):
    masked = mask_password(text)
    assert "s3cret" not in masked and "s3cr%40t" not in masked and "***" in masked


@pytest.mark.parametrize("url", [f"postgresql://u:{SECRET}@h/db", "postgresql://u:a/b@h/db",
                                 "postgresql://u:pw@h:port/db"])
def test_a_url_that_would_show_its_password_in_an_error_is_refused_without_it(url):
    with pytest.raises(ConfigError) as raised:
        check_database_url(url)
    assert "pw" not in str(raised.value).replace("password", "") and SECRET not in str(raised.value)
