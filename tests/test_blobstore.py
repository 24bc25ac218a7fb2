"""The BlobStore adapters against the shared contract: the directory (links served by a real
local server) and S3 (a real moto S3 server on loopback, fetched over HTTP)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from callscribe.api.errors import answer_call_error
from callscribe.api.outputs import build_download_router
from callscribe.blobs.directory import BlobLinkSigner, DirectoryBlobStore, LinkError
from callscribe.model import CallError
from callscribe.testing.simulate import bind_loopback
from tests.blobstore_contract import BlobStoreContract, Fetch


async def http_get(url: str) -> tuple[int, bytes, dict[str, str]]:
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.get(url)
    return response.status_code, response.content, dict(response.headers)


# Directory ------------------------------------------------------------------------------


@pytest.fixture
def directory_store(tmp_path: Path) -> DirectoryBlobStore:
    return DirectoryBlobStore(tmp_path / "blobs", BlobLinkSigner("test-link-key"))


@pytest.fixture
async def file_server(directory_store: DirectoryBlobStore) -> AsyncIterator[str]:
    """The local server's download route on a real socket; yields its base URL."""
    assert directory_store.signer is not None
    app = FastAPI()
    app.include_router(build_download_router(directory_store, directory_store.signer))
    app.add_exception_handler(CallError, answer_call_error)
    sock = bind_loopback()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    await task


class TestDirectoryBlobStore(BlobStoreContract):
    @pytest.fixture
    def blobs(self, directory_store: DirectoryBlobStore) -> DirectoryBlobStore:
        return directory_store

    @pytest.fixture
    def fetch(self, file_server: str) -> Fetch:
        async def get(url: str) -> tuple[int, bytes, dict[str, str]]:
            assert url.startswith("/callscribe/v1/files/")  # a path on the local server
            return await http_get(file_server + url)

        return get


async def test_directory_link_expires_and_cannot_be_altered(
    directory_store: DirectoryBlobStore, file_server: str
) -> None:
    directory_store.put("exports/x/00.jsonl.gz", b"data")
    signer = directory_store.signer
    fresh = directory_store.signed_url("exports/x/00.jsonl.gz", 60)
    assert (await http_get(file_server + fresh))[0] == 200

    # Signed as if an hour ago with a 60 s life: expired now.
    expired = "/callscribe/v1/files/" + signer.token("exports/x/00.jsonl.gz", time.time() - 3540)
    status, body, _ = await http_get(file_server + expired)
    assert status == 403 and b"403-201" in body and b"expired" in body

    token = fresh.rsplit("/", 1)[1]
    forged = BlobLinkSigner("another-key").token("exports/x/00.jsonl.gz", time.time() + 60)
    for bad in (token[:-2] + ("AA" if token[-2:] != "AA" else "BB"), forged):
        assert (await http_get(f"{file_server}/callscribe/v1/files/{bad}"))[0] == 403

    directory_store.delete("exports/x/00.jsonl.gz")  # gone (retention) before the link expired
    status, body, _ = await http_get(file_server + fresh)
    assert status == 404 and b"404-201" in body


def test_link_signer_checks_expiry_against_its_clock() -> None:
    signer = BlobLinkSigner("k")
    token = signer.token("a/b", expires_at=1000, download_name="b.wav")
    grant = signer.verify(token, now=999)
    assert (grant.key, grant.download_name, grant.expires_at) == ("a/b", "b.wav", 1000)
    with pytest.raises(LinkError, match="expired"):
        signer.verify(token, now=1000)


def test_directory_listing_skips_half_written_files(directory_store: DirectoryBlobStore) -> None:
    directory_store.put("r/a.wav", b"1")
    (directory_store.root / "r" / ".a.wav.123.partial").write_bytes(b"half")
    assert [i.key for i in directory_store.list("r/")] == ["r/a.wav"]


def test_directory_delete_removes_empty_folders(directory_store: DirectoryBlobStore) -> None:
    directory_store.put("recordings/acme/twilio/CA1/1-0.wav", b"1")
    directory_store.delete("recordings/acme/twilio/CA1/1-0.wav")
    assert list(directory_store.root.iterdir()) == []


# S3 (moto) ------------------------------------------------------------------------------

BUCKET = "callscribe-blobs-test"


def test_directory_blobs_are_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    """Recordings and feed files: folders 0700, files 0600, from put and from put_file (a
    hard link to, or a copy of, a file that was 0644)."""
    previous = os.umask(0)
    try:
        store = DirectoryBlobStore(tmp_path / "blobs", BlobLinkSigner("k"))
        store.put("exports/acme/2026/00.gz", b"x")
        source = tmp_path / "source.wav"
        source.write_bytes(b"RIFF")
        source.chmod(0o644)
        store.put_file("recordings/acme/twilio/CA1/1-0.wav", source)
    finally:
        os.umask(previous)
    for path in [tmp_path / "blobs", *(tmp_path / "blobs").rglob("*")]:
        assert path.stat().st_mode & 0o777 == (0o700 if path.is_dir() else 0o600), path


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_store(moto_endpoint: str):  # type: ignore[no-untyped-def]
    import boto3
    from botocore.config import Config

    from callscribe.blobs.s3 import S3BlobStore

    client = boto3.client(
        "s3",
        region_name="us-east-1",
        endpoint_url=moto_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(signature_version="s3v4"),
    )
    if BUCKET not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket=BUCKET)
    return S3BlobStore(BUCKET, prefix="deployment-1", client=client)


class TestS3BlobStore(BlobStoreContract):
    @pytest.fixture
    def blobs(self, s3_store):  # type: ignore[no-untyped-def]
        return s3_store

    @pytest.fixture
    def fetch(self) -> Fetch:
        return http_get


def test_s3_links_are_presigned_with_the_asked_expiry(s3_store) -> None:  # type: ignore[no-untyped-def]
    s3_store.put("exports/utterances/acme/2026-01-01/00.jsonl.gz", b"x")
    url = s3_store.signed_url("exports/utterances/acme/2026-01-01/00.jsonl.gz", 900, "f.gz")
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    assert parts.path == f"/{BUCKET}/deployment-1/exports/utterances/acme/2026-01-01/00.jsonl.gz"
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert query["X-Amz-Expires"] == ["900"]
    assert "X-Amz-Signature" in query
    assert query["response-content-disposition"] == ['attachment; filename="f.gz"']
    # SigV4 allows at most 7 days.
    week = parse_qs(urlsplit(s3_store.signed_url("exports/x", 30 * 86400)).query)
    assert week["X-Amz-Expires"] == [str(7 * 86400)]


def test_s3_prefix_keeps_deployments_apart(s3_store, moto_endpoint: str) -> None:  # type: ignore[no-untyped-def]
    from callscribe.blobs.s3 import S3BlobStore

    other = S3BlobStore(BUCKET, prefix="deployment-2", client=s3_store.client)
    s3_store.put("recordings/shared-key.wav", b"one")
    other.put("recordings/shared-key.wav", b"two")
    assert s3_store.get("recordings/shared-key.wav") == b"one"
    assert [i.key for i in other.list("recordings/")] == ["recordings/shared-key.wav"]
    other.purge_older_than("recordings/", time.time() + 10)
    assert s3_store.get("recordings/shared-key.wav") == b"one"
