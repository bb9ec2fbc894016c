"""Ed25519 signing keys for gate attestations: made by `invoke attest.keygen --out DIR`, the
private key found through `PIPELINE_ATTEST_KEY` or the env's `[attest] key`.

A private key file is PKCS#8 PEM, mode 0600; its path may appear in messages, never its bytes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pipeline.attest.dsse import key_id
from pipeline.config import Env
from pipeline.errors import PipelineError

KEY_ENV = "PIPELINE_ATTEST_KEY"
PRIVATE_NAME = "attest.key"
PUBLIC_NAME = "attest.pub"


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path
    keyid: str


def keygen(out: Path) -> KeyPair:
    """A new key pair in `out` (created if needed); refuses to replace an existing key."""
    out.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out / PRIVATE_NAME, out / PUBLIC_NAME
    for path in (private_path, public_path):
        if path.exists():
            raise PipelineError(
                f"{path}: exists; a key is never overwritten (rotate into a new dir)"
            )
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public_path.write_bytes(public_pem(key.public_key()).encode())
    return KeyPair(private_path, public_path, key_id(key.public_key()))


def public_pem(public: Ed25519PublicKey) -> str:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def private_key_path(env: Env, flag: str | None = None) -> Path:
    """The signing key: `--key`, else PIPELINE_ATTEST_KEY, else the env's `[attest] key`
    (relative to the file that set it); a PipelineError naming them when none is set."""
    if flag:
        return Path(flag).expanduser()
    if os.environ.get(KEY_ENV):
        return Path(os.environ[KEY_ENV]).expanduser()
    if env.attest.key:
        return env.file_path("attest.key", env.attest.key)
    raise PipelineError(
        f"no signing key: set {KEY_ENV} or [attest] key in the env file "
        "(make one with `invoke attest.keygen --out DIR`)"
    )


def configured(env: Env) -> bool:
    """A signing key is set for this env (the phases then attest their own passes)."""
    return bool(os.environ.get(KEY_ENV) or env.attest.key)


def load_private(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PipelineError(f"{path}: cannot read the signing key: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise PipelineError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise PipelineError(f"{path}: not an Ed25519 key")
    return key


def load_public(pem: str, where: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError):
        raise PipelineError(f"{where}: not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise PipelineError(f"{where}: not an Ed25519 public key")
    return key
