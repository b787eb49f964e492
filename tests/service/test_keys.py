"""API keys: shown once, stored hashed, revocable."""

import hashlib

import pytest

from service.keys import authenticate, create_api_key, list_api_keys, revoke_api_key
from service.models import ApiKey


def test_a_key_is_shown_once_and_stored_only_as_a_hash(session):
    token = create_api_key(session=session, owner="alice", name="laptop")
    assert token.startswith("vdc_") and len(token) > 40
    (stored,) = session.query(ApiKey).all()
    assert stored.key_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in (stored.key_hash, stored.prefix) and token.startswith(stored.prefix)


def test_authenticate_finds_the_owner(session):
    token = create_api_key(session=session, owner="alice", name="laptop")
    assert authenticate(session=session, token=token).owner == "alice"


@pytest.mark.parametrize("token", ["", "vdc_wrong", "not-a-vdc-key", "vdc_" + "x" * 500])
def test_unknown_keys_are_refused(session, token):
    create_api_key(session=session, owner="alice", name="laptop")
    assert authenticate(session=session, token=token) is None


def test_a_revoked_key_no_longer_authenticates(session):
    token = create_api_key(session=session, owner="alice", name="laptop")
    other = create_api_key(session=session, owner="alice", name="ci")
    key = authenticate(session=session, token=token)
    assert revoke_api_key(session=session, key_id=key.id).revoked_at is not None
    assert authenticate(session=session, token=token) is None
    assert authenticate(session=session, token=other).owner == "alice"
    assert revoke_api_key(session=session, key_id="no-such-key") is None


def test_list_keys_per_owner(session):
    create_api_key(session=session, owner="alice", name="laptop")
    create_api_key(session=session, owner="alice", name="ci")
    create_api_key(session=session, owner="bob", name="laptop")
    assert [k.name for k in list_api_keys(session=session, owner="alice")] == ["laptop", "ci"]
    assert len(list_api_keys(session=session)) == 3


@pytest.mark.parametrize(("owner", "name"), [("", "laptop"), ("   ", "laptop"), ("alice", "x" * 201)])
def test_owner_and_name_are_checked(session, owner, name):
    with pytest.raises(ValueError, match="must be 1 to 200 characters"):
        create_api_key(session=session, owner=owner, name=name)
