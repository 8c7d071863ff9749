"""A site's or an operator's identity: an nkey pair generated where it is used.

The seed (private key) is written once, mode 0600, and never copied anywhere else: servers
above learn only the public key. A credentials file is either such a seed file (what `nats
--nkey` reads) or a JWT `.creds` file (what `nats --creds` reads); `connect_options` tells them
apart for nats-py.
"""

import os
import secrets
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys
from nacl.signing import SigningKey

from fleetbus.errors import ConfigError

SEED_SUFFIX = ".nk"
JWT_MARKER = "-----BEGIN NATS USER JWT-----"
JWT_SEED_MARKER = "-----BEGIN USER NKEY SEED-----"


@dataclass(frozen=True)
class Identity:
    """An nkey pair on disk: `seed_path` holds the seed, `public_key` is what others pin."""

    name: str
    seed_path: Path
    public_key: str

    def seed(self) -> str:
        return self.seed_path.read_text().strip()


def generate_seed() -> str:
    """A fresh user nkey seed (`SU…`), from the operating system's random source."""
    raw = bytes(SigningKey.generate())
    return str(nkeys.encode_seed(raw, nkeys.PREFIX_BYTE_USER).decode())


def public_key(seed: str) -> str:
    try:
        return str(nkeys.from_seed(seed.strip().encode()).public_key.decode())
    except Exception as exc:  # nkeys raises its own error types and binascii errors alike
        msg = f"not an nkey seed: {type(exc).__name__}"
        raise ConfigError(msg) from exc


def ensure(directory: Path, name: str) -> Identity:
    """The identity `name` in `directory`, generated there on first use (seed mode 0600)."""
    path = directory / f"{name}{SEED_SUFFIX}"
    _create_private(path, generate_seed)
    return load(path, name=name)


def _create_private(path: Path, make: Callable[[], str]) -> None:
    """Write `make()` to `path` (mode 0600, its directory created) unless it exists."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(make() + "\n")


def ensure_secret(path: Path) -> str:
    """A random password kept in `path` (mode 0600), generated on first use: a clustered
    site's route login, which every node of it presents and accepts."""
    _create_private(path, lambda: secrets.token_hex(24))
    return path.read_text().strip()


def load(path: Path, *, name: str | None = None) -> Identity:
    try:
        seed = path.read_text()
    except OSError as exc:
        msg = f"cannot read the credentials file {path}: {exc.strerror or exc}"
        raise ConfigError(msg) from exc
    return Identity(name or path.stem, path, public_key(seed))


def seed_of(creds: Path | None) -> str | None:
    """The nkey seed in a credentials file (an nkey seed file, or a JWT .creds file's seed block)."""
    if creds is None:
        return None
    text = creds.read_text()
    if JWT_SEED_MARKER in text:
        block = text.split(JWT_SEED_MARKER, 1)[1]
        return next((line.strip() for line in block.splitlines() if line.strip().startswith("SU")), None)
    return text.strip() or None


def connect_options(creds: Path | None, ca: Path | None = None) -> dict[str, Any]:
    """nats-py `connect()` options for a credentials file (nkey seed or JWT creds) and the CA
    that verifies the server's certificate where its client port takes only TLS (nats-py
    starts TLS only when the server asks for it, so `ca` is harmless elsewhere)."""
    options: dict[str, Any] = {"tls": tls_context(ca)} if ca is not None else {}
    if creds is None:
        return options
    try:
        text = creds.read_text()
    except OSError as exc:
        msg = f"cannot read the credentials file {creds}: {exc.strerror or exc}; pass another with --creds"
        raise ConfigError(msg) from exc
    if JWT_MARKER in text:
        return options | {"user_credentials": str(creds)}
    public_key(text)  # a clear error now rather than an authorization violation later
    return options | {"nkeys_seed": str(creds)}


def tls_context(ca: Path) -> ssl.SSLContext:
    """A client's TLS context: the server's certificate must be issued by `ca` (the fleet CA,
    `fleetbus pki init`) for the host dialled."""
    try:
        return ssl.create_default_context(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        why = getattr(exc, "strerror", None) or exc
        msg = f"cannot use {ca} as the CA certificate: {why}; pass another with --ca"
        raise ConfigError(msg) from exc
