"""DSSE envelopes (secure-systems-lab/dsse v1.0) signed with Ed25519 keys.

An envelope is `{"payload": base64, "payloadType": "...", "signatures": [{"keyid", "sig"}]}`; a
signature is over PAE(type, body) = "DSSEv1" SP len(type) SP type SP len(body) SP body, never over
the JSON around it, so re-serializing an envelope never breaks it.

A key's id is `sha256:` + the hex SHA-256 of its raw 32-byte public key: computed the same from
the private key file, the public key file or a policy's PEM, and shown by `attest.list`.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pipeline.errors import PipelineError

PAYLOAD_TYPE = "application/vnd.in-toto+json"
MEDIA_TYPE = "application/vnd.dsse.envelope.v1+json"


def pae(payload_type: str, body: bytes) -> bytes:
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(body), body)


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"sha256:{hashlib.sha256(raw).hexdigest()}"


def sign(body: bytes, private: Ed25519PrivateKey, payload_type: str = PAYLOAD_TYPE) -> bytes:
    """The envelope (JSON bytes) of `body` signed by `private`."""
    signature = private.sign(pae(payload_type, body))
    envelope = {
        "payload": base64.b64encode(body).decode(),
        "payloadType": payload_type,
        "signatures": [
            {"keyid": key_id(private.public_key()), "sig": base64.b64encode(signature).decode()}
        ],
    }
    return json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Opened:
    """An envelope read: its body, and which of the given keys signed it (by key id)."""

    payload_type: str
    body: bytes
    keyids: tuple[str, ...]  # the signatures' stated key ids
    verified_by: tuple[str, ...]  # ids of the given keys whose signature verifies


def open_envelope(data: bytes, keys: dict[str, Ed25519PublicKey]) -> Opened:
    """Parse an envelope and check each signature against the key its keyid names (or, with no
    keyid, every key). Raises PipelineError on an envelope that is not one."""
    try:
        envelope = json.loads(data)
        body = base64.b64decode(envelope["payload"], validate=True)
        payload_type = envelope["payloadType"]
        signatures = envelope["signatures"]
        if not isinstance(payload_type, str) or not isinstance(signatures, list):
            raise TypeError
    except (ValueError, KeyError, TypeError) as exc:
        raise PipelineError(f"not a DSSE envelope ({type(exc).__name__})") from None
    message = pae(payload_type, body)
    stated, verified = [], []
    for entry in signatures:
        if not isinstance(entry, dict):
            continue
        keyid = str(entry.get("keyid") or "")
        stated.append(keyid)
        try:
            sig = base64.b64decode(str(entry.get("sig", "")), validate=True)
        except ValueError:
            continue
        for kid, public in keys.items():
            if keyid and keyid != kid:
                continue
            try:
                public.verify(sig, message)
            except InvalidSignature:
                continue
            verified.append(kid)
    return Opened(payload_type, body, tuple(stated), tuple(dict.fromkeys(verified)))


def statement_of(opened: Opened) -> dict[str, Any]:
    """The in-toto Statement an envelope carries (PipelineError when it carries none)."""
    if opened.payload_type != PAYLOAD_TYPE:
        raise PipelineError(f"payload type {opened.payload_type!r}, not an in-toto statement")
    try:
        statement = json.loads(opened.body)
    except ValueError:
        raise PipelineError("the payload is not JSON") from None
    if not isinstance(statement, dict):
        raise PipelineError("the payload is not a statement")
    return statement
