"""Who is calling: JWT bearer tokens for every ingress (HTTP, MCP, NATS), and the tenant they act for.

``Authenticator(settings).identify(authorization, named, scope=…)`` is the one identity rule every
ingress calls. It returns a ``Principal`` or raises ``errors.Unauthorized`` (401) naming the reason
(``term``: missing, malformed, expired, not_yet_valid, signature, algorithm, audience, issuer,
claim, tenant_claim) or ``errors.Forbidden`` (403: a tenant named elsewhere, or a missing scope).

* Auth **on** (``enabled``, env ``JWT_ENABLED=1``): the token is verified (HS256 with ``secret``, or
  RS256/ES256 with the PEM ``public_key``); ``exp`` is required, ``iss`` and ``aud`` are checked
  when configured; ``exp``/``nbf``/``iat`` allow ``leeway_s`` (30 s, env ``JWT_LEEWAY_S``) of clock
  skew. The tenant is the ``tenant_claim`` claim. A tenant the caller also names (a body's or
  payload's ``tenant``, an ``X-Tenant`` header, a ``?tenant=`` query string, an MCP tool argument)
  must be the token's: another is refused with 403 naming where it was (``term``: ``tenant``,
  ``X-Tenant``, ``?tenant``), on every ingress alike. ``"default"``, the wire's value for a tenant
  left out, counts as not named.
* Scopes: ``hs:query`` (queries, quotes, results, usage, model lists) and ``hs:reserve``
  (reservations and allocations: reserve, look up, infer on, metrics, release). A token that carries
  any ``hs:`` scope may do only what those grant (403 ``forbidden`` otherwise); a token with no
  ``hs:`` scope (an identity provider that issues none, or only its own) may do both.
* Auth **off** (the default, for development on one machine): no identity is checked, so the
  caller is trusted: the first tenant named (header, then query string, then body) if any, else
  ``default_tenant``; a second place naming another tenant is refused the same way. Tenant
  isolation then only separates well-behaved clients.

``mint_token`` makes development tokens (``homeskillet token``).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import jwt
import msgspec

from .errors import Forbidden, HomeskilletError, Unauthorized

__all__ = ["SCOPES", "UNNAMED_TENANT", "AuthSettings", "Authenticator", "Named", "Principal", "Scope",
           "auth_settings_from_env", "header", "mint_token"]

Algorithm = Literal["HS256", "RS256", "ES256"]
Scope = Literal["hs:query", "hs:reserve"]
SCOPES: tuple[Scope, ...] = ("hs:query", "hs:reserve")
_TRUE = {"1", "true", "yes", "on"}
UNNAMED_TENANT = "default"  # what the wire Structs decode a left-out ``tenant`` to: not a claim
Named = tuple[str, str | None]  # (where a tenant was named, e.g. "X-Tenant", the tenant or None)


class AuthSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    enabled: bool = False
    secret: str = ""  # HS256 shared secret
    public_key: str = ""  # RS256/ES256: PEM text, or a path to a PEM file
    algorithm: Algorithm | None = None  # None: HS256 with a secret, else from the public key's type
    issuer: str = ""  # "" = not checked
    audience: str = ""  # "" = not checked
    tenant_claim: str = "tenant"
    leeway_s: float = 30.0  # clock skew allowed on exp/nbf/iat
    default_tenant: str = "default"

    def __repr__(self) -> str:  # keep the secret out of logs and tracebacks
        masked = "'****'" if self.secret else "''"
        return (f"AuthSettings(enabled={self.enabled}, algorithm={self.algorithm!r}, issuer={self.issuer!r}, "
                f"audience={self.audience!r}, tenant_claim={self.tenant_claim!r}, secret={masked})")


class Principal(msgspec.Struct, kw_only=True, frozen=True):
    tenant: str
    subject: str = ""
    scopes: tuple[str, ...] = ()
    authenticated: bool = False  # False: auth is off and the tenant is the caller's word
    valid_until: float = 0.0  # epoch seconds the token stops being accepted (exp + leeway); 0 = no limit

    def require(self, scope: Scope) -> Principal:
        """This principal, if its token grants ``scope`` (a token with no ``hs:`` scope grants every one)."""
        ours = [s for s in self.scopes if s.startswith("hs:")]
        if ours and scope not in ours:
            raise Forbidden(f"the token does not grant {scope!r} (it grants {' '.join(ours)}); "
                            f"use a token minted with '--scope {scope}'", term="scope")
        return self

    def check_named(self, named: Iterable[Named]) -> Principal:
        """This principal, if every tenant the caller named is its own: else 403 naming the place."""
        for where, tenant in named:
            if tenant and tenant != UNNAMED_TENANT and tenant != self.tenant:
                whose = "the token's tenant" if self.authenticated else "this caller's tenant"
                raise Forbidden(f"{where} names tenant {tenant!r} but {whose} is {self.tenant!r}: a caller "
                                f"acts only for its own tenant; leave {where} out or make it {self.tenant!r}",
                                term=where)
        return self

    def seconds_left(self, now: float | None = None) -> float:
        """How long a connection opened with this principal may stay open (inf when unlimited)."""
        if not self.valid_until:
            return float("inf")
        return self.valid_until - (time.time() if now is None else now)


def auth_settings_from_env(base: AuthSettings | None = None, env: dict[str, str] | None = None) -> AuthSettings:
    """Overlay ``JWT_ENABLED``, ``JWT_SECRET``/``JWT_SECRET_FILE``, ``JWT_PUBLIC_KEY``/``JWT_PUBLIC_KEY_FILE``,
    ``JWT_ALGORITHM``, ``JWT_ISSUER``, ``JWT_AUDIENCE``, ``JWT_TENANT_CLAIM``, ``JWT_LEEWAY_S`` on ``base``."""
    e = os.environ if env is None else env
    s = base or AuthSettings()
    changes: dict[str, Any] = {}
    if "JWT_ENABLED" in e:
        changes["enabled"] = e["JWT_ENABLED"].strip().lower() in _TRUE
    if e.get("JWT_SECRET_FILE"):
        changes["secret"] = _read(e["JWT_SECRET_FILE"], "JWT_SECRET_FILE")
    elif e.get("JWT_SECRET"):
        changes["secret"] = e["JWT_SECRET"]
    if e.get("JWT_PUBLIC_KEY_FILE"):
        changes["public_key"] = _read(e["JWT_PUBLIC_KEY_FILE"], "JWT_PUBLIC_KEY_FILE")
    elif e.get("JWT_PUBLIC_KEY"):
        changes["public_key"] = e["JWT_PUBLIC_KEY"]
    for var, field in (("JWT_ISSUER", "issuer"), ("JWT_AUDIENCE", "audience"), ("JWT_TENANT_CLAIM", "tenant_claim")):
        if e.get(var):
            changes[field] = e[var]
    if e.get("JWT_ALGORITHM"):
        changes["algorithm"] = e["JWT_ALGORITHM"]
    if e.get("JWT_LEEWAY_S"):
        try:
            changes["leeway_s"] = float(e["JWT_LEEWAY_S"])
        except ValueError:
            raise HomeskilletError(f"JWT_LEEWAY_S must be seconds, e.g. 30, not {e['JWT_LEEWAY_S']!r}") from None
    if not changes:
        return s
    try:
        return msgspec.convert({**msgspec.structs.asdict(s), **changes}, AuthSettings)
    except msgspec.ValidationError as exc:
        raise HomeskilletError(f"JWT settings from the environment are invalid: {exc}") from None


def _read(path: str, what: str) -> str:
    try:
        return Path(path).expanduser().read_text().strip()
    except OSError as exc:
        raise HomeskilletError(f"{what}: cannot read {path}: {exc.strerror}") from None


def _pem(text_or_path: str, what: str) -> str:
    if "-----BEGIN" in text_or_path:
        return text_or_path
    return _read(text_or_path, what)


def _key_algorithm(pem: str) -> Algorithm:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

    try:
        key: Any = (load_pem_private_key(pem.encode(), password=None) if "PRIVATE KEY" in pem
                    else load_pem_public_key(pem.encode()))
    except ValueError as exc:
        raise HomeskilletError(f"the JWT key is not a PEM key we can read: {exc}") from None
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return "ES256"
    raise HomeskilletError(f"the JWT key is a {type(key).__name__}; use an RSA (RS256) or EC P-256 (ES256) key")


class Authenticator:
    """Verifies bearer tokens against one ``AuthSettings``; built once, called per request."""

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self._key: str = ""
        self._algorithm: Algorithm = "HS256"
        if not settings.enabled:
            return
        if settings.public_key:
            self._key = _pem(settings.public_key, "public_key")
            self._algorithm = settings.algorithm or _key_algorithm(self._key)
        elif settings.secret:
            self._key, self._algorithm = settings.secret, settings.algorithm or "HS256"
        else:
            raise HomeskilletError("auth is on (JWT_ENABLED) but neither a secret (JWT_SECRET) nor a public key "
                                   "(JWT_PUBLIC_KEY) is set; set one, or turn auth off")
        if self._algorithm == "HS256" and not settings.secret:
            raise HomeskilletError("JWT algorithm HS256 needs a secret (JWT_SECRET), not a public key")
        if self._algorithm != "HS256" and not settings.public_key:
            raise HomeskilletError(f"JWT algorithm {self._algorithm} needs a public key (JWT_PUBLIC_KEY)")
        if not 0 <= settings.leeway_s <= 600:
            raise HomeskilletError(f"auth.leeway_s (JWT_LEEWAY_S) is {settings.leeway_s:g}; "
                                   "allow 0..600 s of clock skew")

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def identify(self, authorization_header: str | None, named: Iterable[Named] = (), *,
                 scope: Scope | None) -> Principal:
        """The identity rule, the same on every ingress: who is calling (401 without a valid token when
        auth is on), every tenant the caller ``named`` must be theirs (403 naming where), then ``scope``
        (403). ``named`` is in precedence order: with auth off the first one named is the tenant."""
        places = [(where, t) for where, t in named if t and t != UNNAMED_TENANT]
        hint = places[0][1] if places else None
        p = self.authenticate(authorization_header, tenant_hint=hint).check_named(places)
        return p.require(scope) if scope is not None else p

    def authenticate(self, authorization_header: str | None, *, tenant_hint: str | None = None) -> Principal:
        """Who is calling, without the named-tenant check (``identify`` is what ingresses call)."""
        s = self.settings
        if not s.enabled:
            return Principal(tenant=tenant_hint or s.default_tenant)
        if not authorization_header:
            raise Unauthorized("no bearer token: send 'Authorization: Bearer <token>' "
                               "(mint one with 'homeskillet token --tenant <name>')", term="missing")
        scheme, _, token = authorization_header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("the Authorization header is not 'Bearer <token>'", term="malformed")
        claims = self._decode(token.strip())
        tenant = claims.get(s.tenant_claim)
        if not isinstance(tenant, str) or not tenant or len(tenant) > 128:
            raise Unauthorized(f"the token has no {s.tenant_claim!r} claim naming a tenant (1..128 characters)",
                               term="tenant_claim")
        return Principal(tenant=tenant, subject=str(claims.get("sub", "")), scopes=_scopes(claims),
                         authenticated=True, valid_until=float(claims["exp"]) + s.leeway_s)

    def _decode(self, token: str) -> dict[str, Any]:
        s = self.settings
        require = ["exp"] + (["iss"] if s.issuer else []) + (["aud"] if s.audience else [])
        try:
            claims: dict[str, Any] = jwt.decode(
                token, self._key, algorithms=[self._algorithm], audience=s.audience or None,
                issuer=s.issuer or None, leeway=s.leeway_s,
                options={"require": require, "verify_aud": bool(s.audience)})
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired; mint a new one", term="expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("the token is not valid yet (nbf/iat in the future)", term="not_yet_valid") from None
        except jwt.InvalidSignatureError:
            raise Unauthorized("the token's signature does not verify with our key", term="signature") from None
        except jwt.InvalidAlgorithmError:
            raise Unauthorized(f"the token is not signed with {self._algorithm}", term="algorithm") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized(f"the token's audience is not {s.audience!r}", term="audience") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized(f"the token's issuer is not {s.issuer!r}", term="issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"the token has no {exc.claim!r} claim", term="claim") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"the token is not a valid JWT: {exc}", term="malformed") from None
        return claims


def _scopes(claims: dict[str, Any]) -> tuple[str, ...]:
    raw = claims.get("scope", claims.get("scopes", ()))
    if isinstance(raw, str):
        return tuple(raw.split())
    if isinstance(raw, list):
        return tuple(str(x) for x in raw)
    return ()


def header(headers: Mapping[str, str] | None, name: str) -> str | None:
    """A NATS header by name, in any letter case (NATS headers are case-sensitive; HTTP's are not)."""
    if not headers:
        return None
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), None)


def mint_token(*, tenant: str, secret: str = "", private_key: str = "", algorithm: Algorithm | None = None,
               ttl_s: float = 3600.0, issuer: str = "", audience: str = "", subject: str = "",
               scopes: Iterable[str] = (), tenant_claim: str = "tenant", now: float | None = None) -> str:
    """A signed token for ``tenant``: HS256 with ``secret``, or RS256/ES256 with a PEM ``private_key``
    (text or path). For development and tests; production tokens come from your identity provider."""
    if not tenant or len(tenant) > 128:
        raise HomeskilletError("the tenant must be 1..128 characters")
    if ttl_s <= 0:
        raise HomeskilletError(f"the token lifetime must be positive, not {ttl_s:g}s")
    if private_key:
        key = _pem(private_key, "private key")
        alg: Algorithm = algorithm or _key_algorithm(key)
    elif secret:
        key, alg = secret, algorithm or "HS256"
    else:
        raise HomeskilletError("minting a token needs a secret (--secret / JWT_SECRET) or a private key (--key)")
    t = time.time() if now is None else now
    claims: dict[str, Any] = {tenant_claim: tenant, "sub": subject or tenant, "iat": int(t),
                              "exp": int(t + ttl_s), "jti": uuid.uuid4().hex}
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    if scopes:
        claims["scope"] = " ".join(scopes)
    return jwt.encode(claims, key, algorithm=alg)
