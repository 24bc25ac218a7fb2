"""The contract every ``Secrets`` adapter honours (``callscribe/secrets.py``). Subclass and
override the ``secrets`` fixture, as tests/test_secrets.py does for each adapter."""

from __future__ import annotations

import itertools

from callscribe.secrets import Secrets


class SecretsContract:
    def test_unknown_name_is_none(self, secrets: Secrets) -> None:
        assert secrets.get("webhook/nobody/token") is None

    def test_put_then_get_and_replace(self, secrets: Secrets) -> None:
        secrets.put("webhook/acme/token", "first")
        assert secrets.get("webhook/acme/token") == "first"
        secrets.put("webhook/acme/token", "second")
        assert secrets.get("webhook/acme/token") == "second"

    def test_names_are_independent(self, secrets: Secrets) -> None:
        secrets.put("webhook/acme/token", "a")
        secrets.put("webhook/globex/token", "b")
        assert secrets.get("webhook/acme/token") == "a"
        assert secrets.get("webhook/globex/token") == "b"

    def test_delete(self, secrets: Secrets) -> None:
        secrets.put("webhook/acme/signing-secret", "whsec_x")
        assert secrets.delete("webhook/acme/signing-secret") is True
        assert secrets.get("webhook/acme/signing-secret") is None
        assert secrets.delete("webhook/acme/signing-secret") is False

    def test_get_or_create_generates_once(self, secrets: Secrets) -> None:
        counter = itertools.count()
        first = secrets.get_or_create("stream-token-signing-key", lambda: f"k{next(counter)}")
        again = secrets.get_or_create("stream-token-signing-key", lambda: f"k{next(counter)}")
        assert first == again == "k0"
