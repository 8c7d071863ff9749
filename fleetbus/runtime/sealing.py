"""Sealed boxes to nkeys (docs/security.md#sealed-secrets).

Every site's and the hub's identity is an ed25519 nkey; its X25519 form (the standard
birational map, libsodium's `crypto_sign_ed25519_*_to_curve25519`) is what secrets are sealed
to, so no second key pair is generated, distributed or pinned. A libsodium sealed box is
anonymous (an ephemeral sender key) and authenticated encryption: only the holder of the
seed opens it, and a changed box does not open.
"""

import base64
import binascii

import nkeys
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox

from fleetbus.errors import FleetbusError
from fleetbus.runtime.enrolltoken import user_key

MAX_SECRET = 64 * 1024  # bytes of plaintext: secrets are passwords, keys, certificates


class SealError(FleetbusError):
    """A box that does not open with this key, or a key that is not one."""


def public_box_key(nkey: str) -> PublicKey:
    """The X25519 public key of a public user nkey (`U…`)."""
    try:
        return user_key(nkey).to_curve25519_public_key()
    except (ValueError, CryptoError) as exc:
        msg = f"{nkey[:12]}… is not a public user nkey: {exc}"
        raise SealError(msg) from exc


def private_box_key(seed: str) -> PrivateKey:
    """The X25519 private key of an nkey seed (`SU…`)."""
    try:
        signing = nkeys.from_seed(seed.encode())._keys
    except (nkeys.NkeysError, ValueError, binascii.Error) as exc:
        msg = f"not an nkey seed: {exc}"
        raise SealError(msg) from exc
    private: PrivateKey = signing.to_curve25519_private_key()
    return private


def seal(plaintext: bytes, nkey: str) -> str:
    """`plaintext` sealed to the holder of `nkey`'s seed, base64."""
    if len(plaintext) > MAX_SECRET:
        msg = f"a secret holds at most {MAX_SECRET} bytes, not {len(plaintext)}"
        raise SealError(msg)
    return base64.b64encode(SealedBox(public_box_key(nkey)).encrypt(plaintext)).decode()


def unseal(box: str, seed: str) -> bytes:
    """Open `box` (base64) with `seed`; SealError if it is not sealed to that key or was changed."""
    try:
        return SealedBox(private_box_key(seed)).decrypt(base64.b64decode(box, validate=True))
    except (binascii.Error, ValueError, CryptoError) as exc:
        msg = f"the box does not open with this key ({type(exc).__name__})"
        raise SealError(msg) from exc
