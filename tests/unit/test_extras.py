"""What needs an extra says so in one sentence when the extra is missing (`peewee-saas-kit[seed]`, `[embedded]`)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kit.errors import FixtureError
from kit.fixtures.errors import Where
from kit.fixtures.resolver import Resolver
from kit.fixtures.tags import Fake

pytestmark = pytest.mark.unit


def test_a_fake_value_without_mimesis_names_the_seed_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mimesis", None)  # as if it were not installed
    with pytest.raises(FixtureError) as caught:
        Resolver.faker(None, Fake(method="person.name"), Where(Path("dev.yaml"), 7), "users.ada.name")
    said = str(caught.value)
    assert said == "dev.yaml:7: users.ada.name: !fake needs mimesis, the seed extra: pip install 'peewee-saas-kit[seed]'"


def test_the_embedded_servers_advice_names_its_extra():
    from kit.embedded import HOW_TO_FIX

    assert "pip install 'peewee-saas-kit[embedded]'" in HOW_TO_FIX and "set DATABASE_URL" in HOW_TO_FIX


def test_better_auths_encryption_without_pynacl_names_its_extra(monkeypatch):
    from kit import betterauth
    from kit.errors import KitError

    assert betterauth.decrypt(betterauth.encrypt("otp-secret")) == "otp-secret"  # with it: as Better Auth does
    monkeypatch.setitem(sys.modules, "nacl", None)
    monkeypatch.setitem(sys.modules, "nacl.bindings", None)
    with pytest.raises(KitError, match=r"needs PyNaCl, the betterauth extra: pip install 'peewee-saas-kit\[betterauth\]'"):
        betterauth.encrypt("otp-secret")
    assert betterauth.verify_password(betterauth.hash_password("pw"), "pw")  # hashing needs no extra


def test_seeding_without_pyyaml_names_the_seed_extra_in_one_line(tmp_path):
    import subprocess

    hide = tmp_path / "sitecustomize.py"  # runs first in the child: PyYAML as if it were not installed
    hide.write_text("import sys\nsys.modules['yaml'] = None\n")
    ran = subprocess.run([sys.executable, "-m", "kit.seed", "fixtures/dev.yaml"], capture_output=True, text=True,
                         timeout=60, env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)})
    assert ran.returncode == 1 and ran.stdout == ""
    assert ran.stderr == ("kit.seed: error: seed fixtures are YAML and PyYAML is not installed: "
                          "pip install 'peewee-saas-kit[seed]'\n")
