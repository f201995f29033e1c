"""Better Auth's wire formats, for Python code that shares its tables: password hashes and encrypted values.

- `hash_password` / `verify_password`: scrypt (N=16384, r=16, p=1, 64-byte key) stored as `salt:key`
  in hex, the password NFKC-normalised first, as `better-auth/crypto` does.
- `encrypt` / `decrypt`: Better Auth's `symmetricEncrypt`: XChaCha20-Poly1305 under the SHA-256 of
  the secret, a 24-byte nonce before the ciphertext, all in hex; with versioned secrets
  (`BETTER_AUTH_SECRETS="2:new,1:old"`) wrapped as `$ba$<version>$<hex>`. Two-factor secrets and
  backup codes are stored this way.

The secret is Better Auth's: `BETTER_AUTH_SECRETS`, else `BETTER_AUTH_SECRET`, else `AUTH_SECRET`, else
Better Auth's own development default (`DEVELOPMENT_SECRET`), in the order Better Auth reads them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import unicodedata
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType

from kit.errors import ArgumentError, ConfigError, DecryptionError, KitError


def _nacl() -> ModuleType:
    """libsodium's XChaCha20-Poly1305 (PyNaCl), the `betterauth` extra: imported by what encrypts or decrypts."""
    try:
        import nacl.bindings
        import nacl.exceptions
    except ImportError:
        raise KitError("encrypting or decrypting Better Auth's values needs PyNaCl, the betterauth extra: "
                       "pip install 'peewee-saas-kit[betterauth]'") from None
    return nacl


DEVELOPMENT_SECRET = "better-auth-secret-12345678901234567890"  # Better Auth's fallback when none is set
NONCE_BYTES = 24
ENVELOPE_PREFIX = "$ba$"



@dataclass(frozen=True)
class Secrets:
    """Better Auth's secrets: the one it encrypts with, and every one it can still decrypt with."""

    current: str = field(repr=False)
    version: int | None = None  # set when the secrets are versioned (BETTER_AUTH_SECRETS)
    keys: Mapping[int, str] = field(default_factory=dict, repr=False)
    legacy: str | None = field(default=None, repr=False)  # for values written before versioning


def load_secrets(env: Mapping[str, str] | None = None) -> Secrets:
    """Better Auth's secrets from the environment, read as Better Auth reads them."""
    env = os.environ if env is None else env
    legacy = env.get("BETTER_AUTH_SECRET") or env.get("AUTH_SECRET") or ""
    versioned = (env.get("BETTER_AUTH_SECRETS") or "").strip()
    if not versioned:
        return Secrets(legacy or DEVELOPMENT_SECRET)
    keys: dict[int, str] = {}
    for position, entry in enumerate(versioned.split(","), 1):
        version, sep, value = entry.strip().partition(":")
        if not sep or not version.strip().isdigit() or not value.strip():
            raise ConfigError(f"BETTER_AUTH_SECRETS entry {position} must look like <version>:<secret>")
        keys[int(version)] = value.strip()
    current = int(versioned.split(",")[0].partition(":")[0])
    return Secrets(keys[current], current, keys, legacy if legacy and legacy != DEVELOPMENT_SECRET else None)


SESSION_COOKIE = "better-auth.session_token"  # Better Auth's session cookie, without the __Secure- prefix of https


def session_cookie(token: str, secrets: Secrets | None = None) -> str:
    """The value of Better Auth's session cookie for session `token`, signed as Better Auth signs it (HMAC-SHA256)."""
    secret = (secrets or load_secrets()).current
    signature = base64.b64encode(hmac.new(secret.encode("utf-8"), token.encode("utf-8"), hashlib.sha256).digest())
    return urllib.parse.quote(f"{token}.{signature.decode()}", safe="-_.!~*'()")  # as encodeURIComponent


def _key(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


def encrypt(plain: str, secrets: Secrets | None = None, nonce: bytes | None = None) -> str:
    """`plain` encrypted as Better Auth's `symmetricEncrypt` does (a random nonce unless one is given)."""
    secrets = secrets or load_secrets()
    nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
    if len(nonce) != NONCE_BYTES:
        raise ArgumentError(f"the nonce must be {NONCE_BYTES} bytes, got {len(nonce)}")
    sealed = _nacl().bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(plain.encode("utf-8"), None, nonce,
                                                                          _key(secrets.current))
    text = (nonce + sealed).hex()
    return text if secrets.version is None else f"{ENVELOPE_PREFIX}{secrets.version}${text}"


def deterministic_nonce(plain: str, secrets: Secrets | None = None) -> bytes:
    """A nonce derived from the secret and the value: the same value encrypts the same way every time.

    For seeds, so a second load finds rows unchanged. It reveals only that two ciphertexts hold the
    same value, which a seed's readers know anyway.
    """
    secrets = secrets or load_secrets()
    digest = hmac.new(_key(secrets.current), b"kit-seed-nonce|" + plain.encode("utf-8"), hashlib.sha256)
    return digest.digest()[:NONCE_BYTES]


def decrypt(stored: str, secrets: Secrets | None = None) -> str:
    """A value written by Better Auth's `symmetricEncrypt` (or `encrypt`), decrypted."""
    secrets = secrets or load_secrets()
    secret = secrets.current if secrets.version is None else None
    text = stored
    if stored.startswith(ENVELOPE_PREFIX):
        version_text, sep, text = stored[len(ENVELOPE_PREFIX):].partition("$")
        if not sep or not version_text.isdigit():
            raise DecryptionError("the value starts with $ba$ but has no version")
        secret = secrets.keys.get(int(version_text))
        if secret is None:
            raise DecryptionError(f"the value was encrypted with secret version {version_text}, which is not set")
    elif secret is None:
        secret = secrets.legacy
        if secret is None:
            raise DecryptionError("the value has no $ba$ version prefix and no BETTER_AUTH_SECRET is set for it")
    nacl = _nacl()
    try:
        raw = bytes.fromhex(text)
        opened = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(raw[NONCE_BYTES:], None, raw[:NONCE_BYTES],
                                                                          _key(secret))
    except (ValueError, nacl.exceptions.CryptoError):
        raise DecryptionError("the value cannot be decrypted with this secret (another secret, or not "
                              "Better Auth's format)") from None
    return opened.decode("utf-8")


def hash_password(plain: str, salt: str | None = None) -> str:
    """Better Auth's password hash of `plain` (a random 16-byte salt unless one is given)."""
    salt = os.urandom(16).hex() if salt is None else salt
    return f"{salt}:{_scrypt(plain, salt).hex()}"


def verify_password(stored: str, plain: str) -> bool:
    """Whether `plain` matches a Better Auth password hash."""
    salt, sep, key = stored.partition(":")
    if not sep:
        return False
    return hmac.compare_digest(_scrypt(plain, salt).hex(), key.lower())


def _scrypt(plain: str, salt: str) -> bytes:
    text = unicodedata.normalize("NFKC", plain)
    return hashlib.scrypt(text.encode("utf-8"), salt=salt.encode(), n=16384, r=16, p=1, dklen=64, maxmem=64 << 20)
