"""auth.py as pure calls: every rejection reason, both key kinds, the env overlay, auth off."""

from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from homeskillet.auth import Authenticator, AuthSettings, Principal, auth_settings_from_env, mint_token
from homeskillet.errors import HomeskilletError, Unauthorized

SECRET = "s" * 32
ON = AuthSettings(enabled=True, secret=SECRET, issuer="hs-test", audience="homeskillet")


def _tok(**kw: object) -> str:
    args: dict[str, object] = {"tenant": "acme", "secret": SECRET, "issuer": "hs-test", "audience": "homeskillet"}
    args.update(kw)
    return mint_token(**args)  # type: ignore[arg-type]


def _reason(auth: Authenticator, header: str | None) -> str | None:
    with pytest.raises(Unauthorized) as err:
        auth.authenticate(header)
    assert err.value.status == 401
    return err.value.term


def test_valid_token_gives_the_tenant_from_the_claim() -> None:
    p = Authenticator(ON).authenticate("Bearer " + _tok(scopes=["hs:query", "hs:reserve"], subject="ci"))
    assert p == Principal(tenant="acme", subject="ci", scopes=("hs:query", "hs:reserve"), authenticated=True,
                          valid_until=p.valid_until)
    assert 3500 < p.seconds_left() <= 3600 + ON.leeway_s  # a connection may stay open until exp + leeway


def test_the_claim_beats_the_callers_hint() -> None:
    p = Authenticator(ON).authenticate("Bearer " + _tok(), tenant_hint="victim")
    assert p.tenant == "acme"


@pytest.mark.parametrize(("header", "reason"), [
    (None, "missing"),
    ("", "missing"),
    ("Basic dXNlcjpwYXNz", "malformed"),
    ("Bearer ", "malformed"),
    ("Bearer not.a.jwt", "malformed"),
])
def test_bad_headers(header: str | None, reason: str) -> None:
    assert _reason(Authenticator(ON), header) == reason


def test_each_bad_token_names_its_reason() -> None:
    auth = Authenticator(ON)
    assert _reason(auth, "Bearer " + _tok(now=time.time() - 7200)) == "expired"
    assert _reason(auth, "Bearer " + _tok(secret="x" * 32)) == "signature"
    assert _reason(auth, "Bearer " + _tok(audience="someone-else")) == "audience"
    assert _reason(auth, "Bearer " + _tok(issuer="evil")) == "issuer"
    assert _reason(auth, "Bearer " + _tok(audience="")) == "claim"
    assert _reason(auth, "Bearer " + _tok(tenant_claim="org")) == "tenant_claim"
    no_exp = jwt.encode({"tenant": "acme", "iss": "hs-test", "aud": "homeskillet"}, SECRET, algorithm="HS256")
    assert _reason(auth, "Bearer " + no_exp) == "claim"
    unsigned = jwt.encode({"tenant": "acme", "exp": time.time() + 60}, None, algorithm="none")
    assert _reason(auth, "Bearer " + unsigned) == "algorithm"


def test_leeway_accepts_small_clock_skew() -> None:
    tok = _tok(ttl_s=1, now=time.time() - 5)
    assert Authenticator(ON).authenticate("Bearer " + tok).tenant == "acme"
    assert _reason(Authenticator(AuthSettings(enabled=True, secret=SECRET, leeway_s=0)), "Bearer " + tok) == "expired"


def _pems(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> tuple[str, str]:
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return priv, pub


@pytest.mark.parametrize(("make", "alg"), [
    (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"),
    (lambda: ec.generate_private_key(ec.SECP256R1()), "ES256"),
])
def test_public_key_algorithms(make, alg: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    priv, pub = _pems(make())
    key_file = tmp_path / "key.pem"
    key_file.write_text(priv)
    tok = mint_token(tenant="acme", private_key=str(key_file), audience="homeskillet")
    assert jwt.get_unverified_header(tok)["alg"] == alg
    auth = Authenticator(AuthSettings(enabled=True, public_key=pub, audience="homeskillet"))
    assert auth.authenticate("Bearer " + tok).tenant == "acme"
    # A token signed by another key of the same kind, and an HS256 token, are both refused.
    other_priv, _ = _pems(make())
    assert _reason(auth, "Bearer " + mint_token(tenant="acme", private_key=other_priv, audience="homeskillet")) \
        == "signature"
    assert _reason(auth, "Bearer " + mint_token(tenant="acme", secret=SECRET, audience="homeskillet")) == "algorithm"


def test_auth_off_trusts_the_hint_or_defaults() -> None:
    auth = Authenticator(AuthSettings())
    assert auth.authenticate(None) == Principal(tenant="default")
    assert auth.authenticate("Bearer whatever", tenant_hint="acme").tenant == "acme"


def test_misconfiguration_is_a_clear_error() -> None:
    with pytest.raises(HomeskilletError, match="neither a secret"):
        Authenticator(AuthSettings(enabled=True))
    with pytest.raises(HomeskilletError, match="needs a public key"):
        Authenticator(AuthSettings(enabled=True, secret=SECRET, algorithm="RS256"))
    with pytest.raises(HomeskilletError, match="needs a secret"):
        mint_token(tenant="acme")
    with pytest.raises(HomeskilletError, match=r"1\.\.128"):
        mint_token(tenant="", secret=SECRET)


def test_env_overlay(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "secret"
    f.write_text(SECRET + "\n")
    s = auth_settings_from_env(env={"JWT_ENABLED": "true", "JWT_SECRET_FILE": str(f), "JWT_AUDIENCE": "hs"})
    assert (s.enabled, s.secret, s.audience) == (True, SECRET, "hs")
    assert auth_settings_from_env(env={"JWT_ENABLED": "0"}).enabled is False
    with pytest.raises(HomeskilletError, match="JWT settings"):
        auth_settings_from_env(env={"JWT_ALGORITHM": "none"})


def test_the_secret_stays_out_of_repr() -> None:
    assert SECRET not in repr(ON) and SECRET not in str(ON)


def test_scopes_restrict_only_when_the_token_carries_ours() -> None:
    from homeskillet.errors import Forbidden

    both = Principal(tenant="a", scopes=())
    assert both.require("hs:reserve") is both
    assert Principal(tenant="a", scopes=("openid",)).require("hs:query")  # other issuers' scopes don't count
    with pytest.raises(Forbidden, match="hs:reserve") as err:
        Principal(tenant="a", scopes=("hs:query", "openid")).require("hs:reserve")
    assert err.value.status == 403 and err.value.term == "scope"


# --- the one identity rule every ingress calls (identify), the leeway setting ----------------------------


def _refusal(auth: Authenticator, header: str | None, named: list[tuple[str, str | None]]) -> tuple[int, str | None]:
    from homeskillet.errors import Forbidden

    with pytest.raises(Forbidden) as err:
        auth.identify(header, named, scope="hs:query")
    return err.value.status, err.value.term


def test_identify_refuses_another_tenant_wherever_it_is_named() -> None:
    auth, header = Authenticator(ON), "Bearer " + _tok()
    for where in ("tenant", "X-Tenant", "?tenant"):
        assert _refusal(auth, header, [(where, "victim")]) == (403, where)
    # The same tenant, nothing, or the wire's value for "left out" is fine, in any mix.
    ok = auth.identify(header, [("X-Tenant", "acme"), ("?tenant", None), ("tenant", "default")], scope="hs:query")
    assert ok.tenant == "acme" and ok.authenticated
    # A bad token is 401 before anything named is looked at; the scope is checked last.
    with pytest.raises(Unauthorized):
        auth.identify(None, [("tenant", "victim")], scope="hs:query")
    assert _refusal(auth, "Bearer " + _tok(scopes=["hs:reserve"]), [("tenant", "acme")]) == (403, "scope")


def test_identify_with_auth_off_takes_the_first_named_and_refuses_a_second() -> None:
    auth = Authenticator(AuthSettings())
    assert auth.identify(None, [("X-Tenant", None), ("tenant", "acme")], scope=None).tenant == "acme"
    assert auth.identify(None, [("X-Tenant", "acme"), ("tenant", "acme")], scope=None).tenant == "acme"
    assert auth.identify(None, [("tenant", "default")], scope=None).tenant == "default"
    assert _refusal(auth, None, [("X-Tenant", "acme"), ("tenant", "globex")]) == (403, "tenant")


def test_leeway_is_configurable_in_settings_and_env() -> None:
    tok = "Bearer " + _tok(ttl_s=1, now=time.time() - 20)  # expired 19 s ago
    assert Authenticator(ON).authenticate(tok).tenant == "acme"  # within the default 30 s
    tight = auth_settings_from_env(ON, env={"JWT_LEEWAY_S": "5"})
    assert tight.leeway_s == 5.0 and _reason(Authenticator(tight), tok) == "expired"
    with pytest.raises(HomeskilletError, match="JWT_LEEWAY_S"):
        auth_settings_from_env(env={"JWT_LEEWAY_S": "half a minute"})
    with pytest.raises(HomeskilletError, match=r"0\.\.600"):
        Authenticator(AuthSettings(enabled=True, secret=SECRET, leeway_s=-1))


def test_leeway_from_the_config_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from homeskillet.config import load_settings

    path = tmp_path / "hs.toml"
    path.write_text('[auth]\nenabled = true\nsecret = "' + SECRET + '"\nleeway_s = 2.5\n')
    assert load_settings(str(path)).auth.leeway_s == 2.5


def test_reported_usd_is_rounded_to_the_nano_dollar() -> None:
    import msgspec

    from homeskillet.money import round_usd

    noisy = 7 * 0.3 / 1e6
    assert repr(noisy) == "2.1000000000000002e-06"
    assert round_usd(noisy) == 2.1e-06 and msgspec.json.encode(round_usd(noisy)) == b"2.1e-6"
    assert round_usd(1e-10) == 0.0 and round_usd(1.23456789012) == 1.23456789
