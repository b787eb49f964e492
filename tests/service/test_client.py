"""The ``vdc`` command's client: a read that a busy server refused with Retry-After is tried again."""

import httpx
import pytest

from service.client import BUSY_RETRIES, ApiError, Client


def client_answering(*statuses: int) -> tuple[Client, list[str]]:
    """A client whose server answers with ``statuses`` in turn (503s with Retry-After: 0), then 200."""
    seen: list[str] = []
    answers = iter(statuses)

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        status = next(answers, 200)
        if status == 503:
            return httpx.Response(503, headers={"Retry-After": "0"}, json={"detail": "the server is busy"})
        return httpx.Response(status, json={"id": "j", "state": "running"})

    client = Client("http://api", "vdc_key")
    client.http = httpx.Client(base_url="http://api", transport=httpx.MockTransport(answer))
    return client, seen


def test_a_busy_server_is_asked_again_after_its_retry_after():
    client, seen = client_answering(503, 503)
    assert client.job("j")["state"] == "running"
    assert seen == ["GET"] * 3


def test_a_server_busy_for_too_long_is_reported():
    client, seen = client_answering(*[503] * (BUSY_RETRIES + 1))
    with pytest.raises(ApiError, match="503: the server is busy"):
        client.job("j")
    assert len(seen) == BUSY_RETRIES + 1


def test_a_cancel_is_not_repeated():
    client, seen = client_answering(503)
    with pytest.raises(ApiError, match="503"):
        client.cancel("j")
    assert seen == ["DELETE"]
