"""Prediction IDs: a reference to one predicted row that any replica can check, with no database.

A prediction ID is a signed token (HMAC-SHA256, standard library, truncated to 128 bits) over

    format (1 byte) | issued at (uint32, Unix seconds) | nonce (8 random bytes)
    | score (uint16, the predicted class's probability in thousandths, rounded up)
    | predicted class (1-byte length + UTF-8) | model version (1-byte length + UTF-8)

written as unpadded URL-safe base64 (about 60 characters for this project's model). Nothing in
it is secret (the client already has the prediction); the MAC only proves that this deployment
issued it. The signing key is derived from PREDICTION_SIGNING_SECRET and the model's name, so a
token of another deployment or another model fails the check like a forged one. A token is
accepted until PREDICTION_ID_TTL_SECONDS after it was issued (at most CLOCK_SKEW_SECONDS in the
future, for replicas whose clocks differ).

Request IDs: a client's `X-Request-ID` is kept when it is well formed (REQUEST_ID), otherwise a
random one is made; it is never echoed when malformed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import os
import re
import struct
from dataclasses import dataclass
from enum import StrEnum

FORMAT = 1
MAC_BYTES = 16
NONCE_BYTES = 8
# Model versions and class names longer than this (UTF-8 bytes) get no prediction IDs.
MAX_FIELD_BYTES = 64
# The longest string a valid token can be: anything longer is refused before decoding.
MAX_TOKEN_CHARS = 4 * (1 + 4 + NONCE_BYTES + 2 + 2 * (1 + MAX_FIELD_BYTES) + MAC_BYTES) // 3 + 4
CLOCK_SKEW_SECONDS = 300
SCORE_SCALE = 1000
_HEAD = struct.Struct(">BI8sH")
_DERIVE = b"ml-service prediction id v1\x00"
REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,127}")


def request_id(header: str | None) -> str:
    """The client's request ID when it is well formed, else a new random one."""
    if header is not None and REQUEST_ID.fullmatch(header):
        return header
    return os.urandom(16).hex()


class Refusal(StrEnum):
    """Why a token is refused (the `reason` label of mlservice_feedback_refused_total)."""

    MALFORMED = "malformed"  # not a token of this format at all
    INVALID_SIGNATURE = "invalid_signature"  # forged, altered, or another deployment's/model's
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"  # issued in the future beyond the allowed clock skew


class TokenError(Exception):
    def __init__(self, reason: Refusal) -> None:
        super().__init__(reason.value)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Claims:
    """What a valid prediction ID says about its row."""

    model_version: str
    predicted: str
    score: float  # probability of the predicted class, rounded up to 1/SCORE_SCALE
    issued_at: int  # Unix seconds
    nonce: int  # 64 random bits: the row's identity for duplicate detection


def _keyed(secret: bytes, model_name: str) -> hmac.HMAC:
    """HMAC-SHA256 keyed with a key derived from the secret and the model's name; callers
    `copy()` it per token (cheaper than keying a new one)."""
    key = hmac.digest(secret, _DERIVE + model_name.encode(), "sha256")
    return hmac.new(key, digestmod=hashlib.sha256)


def _mac(keyed: hmac.HMAC, body: bytes) -> bytes:
    h = keyed.copy()
    h.update(body)
    return h.digest()[:MAC_BYTES]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _short(text: str) -> bytes | None:
    raw = text.encode()
    return raw if len(raw) <= MAX_FIELD_BYTES else None


class Signer:
    """Issues and checks the prediction IDs of one model (its name is part of the key)."""

    def __init__(
        self, secret: bytes, model_name: str, ttl_seconds: int, previous: bytes | None = None
    ) -> None:
        self._key = _keyed(secret, model_name)
        # Keys that still verify (a rotation: tokens signed with the previous secret stay valid).
        self._keys = [self._key] + ([_keyed(previous, model_name)] if previous else [])
        self.ttl = ttl_seconds

    def tail(self, model_version: str, classes: tuple[str, ...]) -> dict[str, bytes] | None:
        """The encoded (class, version) suffix per class, or None when a field is too long
        for a token (the model then serves without prediction IDs)."""
        version = _short(model_version)
        if version is None:
            return None
        tails = {}
        for c in classes:
            name = _short(c)
            if name is None:
                return None
            tails[c] = bytes([len(name)]) + name + bytes([len(version)]) + version
        return tails

    def issue(
        self, tails: dict[str, bytes], labels: list[str], proba: list[list[float]], now: float
    ) -> list[str]:
        """One token per row: `labels` are the predicted classes, `proba` the probabilities."""
        issued = int(now)
        nonces = os.urandom(NONCE_BYTES * len(labels))
        key, pack, ceil = self._key, _HEAD.pack, math.ceil
        out = []
        for i, (label, row) in enumerate(zip(labels, proba, strict=True)):
            # Rounded up, so that "score <= edge" holds for the token exactly when it held for
            # the probability (edges on the 1/1000 grid); the epsilon absorbs 0.95 * 1000 =
            # 950.0000000000001.
            score = min(SCORE_SCALE, max(0, ceil(max(row) * SCORE_SCALE - 1e-6)))
            nonce = nonces[i * NONCE_BYTES : (i + 1) * NONCE_BYTES]
            body = pack(FORMAT, issued, nonce, score) + tails[label]
            out.append(_b64(body + _mac(key, body)))
        return out

    def verify(self, token: str, now: float) -> Claims:
        if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_CHARS:
            raise TokenError(Refusal.MALFORMED)
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise TokenError(Refusal.MALFORMED) from None
        if len(raw) < _HEAD.size + 2 + MAC_BYTES or raw[0] != FORMAT:
            raise TokenError(Refusal.MALFORMED)
        body, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
        if not any(hmac.compare_digest(_mac(k, body), mac) for k in self._keys):
            raise TokenError(Refusal.INVALID_SIGNATURE)
        # Signed by us, so well formed: the fields below were written by `issue`.
        _, issued, nonce, score = _HEAD.unpack_from(body)
        at = _HEAD.size
        predicted = body[at + 1 : at + 1 + body[at]].decode()
        at += 1 + body[at]
        version = body[at + 1 : at + 1 + body[at]].decode()
        if issued > now + CLOCK_SKEW_SECONDS:
            raise TokenError(Refusal.NOT_YET_VALID)
        if now - issued > self.ttl:
            raise TokenError(Refusal.EXPIRED)
        return Claims(version, predicted, score / SCORE_SCALE, issued, int.from_bytes(nonce))
