"""Tokens: the OAuth JWT-bearer grant the sandbox's keys name, and bearer checks."""

from __future__ import annotations

import base64
import json
import secrets
import time

from coiled_setup.sandbox import errors
from coiled_setup.sandbox.world import World

TOKEN_LIFETIME_S = 3600


class GrantError(Exception):
    def __init__(self, error: str, description: str):
        super().__init__(description)
        self.error = error
        self.description = description


def _b64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def _verified_claims(world: World, jwt: str) -> dict:
    """Claims of a JWT signed by a live user-managed key of an enabled account."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    try:
        h64, c64, s64 = jwt.split(".")
        header = json.loads(_b64(h64))
        claims = json.loads(_b64(c64))
        sig = _b64(s64)
    except Exception:
        raise GrantError("invalid_grant", "Invalid JWT: malformed.") from None
    key = world.keys.get(header.get("kid", ""))
    if key is None or key.key_type != "USER_MANAGED" or key.email != claims.get("iss"):
        raise GrantError("invalid_grant", "Invalid JWT Signature.")
    pub = serialization.load_pem_public_key(key.public_pem)
    try:
        pub.verify(sig, f"{h64}.{c64}".encode(), padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise GrantError("invalid_grant", "Invalid JWT Signature.") from None
    if not world.key_usable(key):
        # As Google answers for a key made moments ago (and for one deleted): usable within about a minute.
        raise GrantError("invalid_grant", "Invalid JWT Signature.")
    if float(claims.get("exp", 0)) < time.time() - 60:
        raise GrantError("invalid_grant", "Invalid JWT: Token must be a short-lived token.")
    sa = world.accounts.get(key.email)
    if sa is None:
        raise GrantError("invalid_grant", "Invalid grant: account not found")
    if sa.disabled:
        raise GrantError("invalid_grant", "Invalid grant: account disabled")
    if key.disabled:
        raise GrantError("invalid_grant", "Invalid JWT Signature.")
    return claims


def grant_token(world: World, form: dict[str, str]) -> dict:
    if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
        raise GrantError("unsupported_grant_type", "Invalid grant_type.")
    with world.lock:
        claims = _verified_claims(world, form.get("assertion", ""))
        token = "ya29.sandbox." + secrets.token_urlsafe(32)
        world.tokens[token] = (claims["iss"], time.time() + TOKEN_LIFETIME_S)
    return {"access_token": token, "expires_in": TOKEN_LIFETIME_S, "token_type": "Bearer"}


def caller_of(world: World, authorization: str | None) -> str:
    """The email behind a bearer token, or UNAUTHENTICATED as Google answers."""
    if not authorization or not authorization.lower().startswith("bearer "):
        raise errors.unauthenticated(
            "Request is missing required authentication credential. Expected OAuth 2 access token, "
            "login cookie or other valid authentication credential."
        )
    token = authorization[7:].strip()
    invalid = (
        "Request had invalid authentication credentials. Expected OAuth 2 access token, "
        "login cookie or other valid authentication credential."
    )
    with world.lock:
        if token.count(".") == 2 and not token.startswith("ya29."):
            # Self-signed JWT, as client libraries send for service-account keys.
            try:
                email = _verified_claims(world, token)["iss"]
            except GrantError:
                email = None
        else:
            email, expiry = world.tokens.get(token, (None, 0.0))
            if email and expiry < time.time():
                raise errors.unauthenticated(invalid, "ACCESS_TOKEN_EXPIRED")
        if email is None:
            raise errors.unauthenticated(invalid, "ACCESS_TOKEN_TYPE_UNSUPPORTED")
        sa = world.accounts.get(email)
        if sa is None or sa.disabled:
            raise errors.unauthenticated(invalid, "ACCOUNT_STATE_INVALID")
        return email


def generate_access_token(world: World, authorization: str | None, target: str) -> tuple[int, dict]:
    """IAM Credentials generateAccessToken: a token of `target` for a caller holding
    iam.serviceAccounts.getAccessToken on it (roles/iam.serviceAccountTokenCreator), as (HTTP status, body)."""
    from coiled_setup.sandbox.errors import ApiError

    try:
        caller = caller_of(world, authorization)
    except ApiError as e:
        return 401, {"error": {"code": 401, "message": e.message, "status": "UNAUTHENTICATED"}}
    permission = "iam.serviceAccounts.getAccessToken"
    with world.lock:
        sa = world.accounts.get(target)
        p = world.projects.get(sa.project_id) if sa is not None else None
        code = "OK"
        if sa is None or p is None or not world.holds(caller, permission, p, None):
            code = "PERMISSION_DENIED"
        world.record(service="iamcredentials", method="GenerateAccessToken", caller=caller, code=code, write=False,
                     mutating=False, resource=f"projects/-/serviceAccounts/{target}", fault=None)
        if code != "OK":
            return 403, {"error": {"code": 403, "status": "PERMISSION_DENIED",
                                   "message": f"Permission '{permission}' denied on resource (or it may not exist).",
                                   "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                                "reason": "IAM_PERMISSION_DENIED", "domain": "iam.googleapis.com",
                                                "metadata": {"permission": permission}}]}}
        token = "ya29.sandbox." + secrets.token_urlsafe(32)
        expiry = time.time() + TOKEN_LIFETIME_S
        world.tokens[token] = (target, expiry)
    return 200, {"accessToken": token, "expireTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expiry))}
