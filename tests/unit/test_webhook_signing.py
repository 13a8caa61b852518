"""webhooks/signing.py: a signature verifies for its body, secret and time only."""

from __future__ import annotations

from agentledger.webhooks.signing import new_secret, sign, verify

BODY = b'{"id":"dlv_1","event":"run_stopped"}'
NOW = 1_764_158_400


def test_a_signed_body_verifies() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_") and len(secret) > 40
    header = sign(secret, BODY, NOW)
    assert header.startswith(f"t={NOW},v1=")
    assert verify(secret, header, BODY, NOW + 299)


def test_a_tampered_body_fails() -> None:
    secret = new_secret()
    assert not verify(secret, sign(secret, BODY, NOW), BODY.replace(b"run_stopped", b"run_started"), NOW)


def test_an_old_or_future_timestamp_fails() -> None:
    secret = new_secret()
    header = sign(secret, BODY, NOW)
    assert not verify(secret, header, BODY, NOW + 301)
    assert not verify(secret, header, BODY, NOW - 301)
    assert verify(secret, header, BODY, NOW + 1000, tolerance=1000)


def test_a_wrong_secret_fails() -> None:
    assert not verify(new_secret(), sign(new_secret(), BODY, NOW), BODY, NOW)


def test_a_changed_timestamp_fails_and_junk_headers_fail() -> None:
    secret = new_secret()
    digest = sign(secret, BODY, NOW).split(",v1=")[1]
    assert not verify(secret, f"t={NOW + 1},v1={digest}", BODY, NOW)
    for junk in ("", "t=abc,v1=00", f"t={NOW}", "v1=" + digest, f"t=-{NOW},v1={digest}"):
        assert not verify(secret, junk, BODY, NOW)


def test_any_of_several_signatures_may_match() -> None:
    old, new = new_secret(), new_secret()
    both = sign(old, BODY, NOW) + ",v1=" + sign(new, BODY, NOW).split(",v1=")[1]
    assert verify(new, both, BODY, NOW) and verify(old, both, BODY, NOW)
