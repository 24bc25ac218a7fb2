"""The contract every ``BlobStore`` adapter honours (``callscribe/blobs/base.py``).

An adapter's test class subclasses ``BlobStoreContract`` and overrides the ``blobs`` fixture
and ``fetch`` (GET a signed link over real HTTP: status and body). Every test works under a
prefix of its own, so a bucket shared between tests passes as well as an empty directory.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from callscribe.blobs.base import BlobNotFound, BlobStore, key_segment

Fetch = Callable[[str], Awaitable[tuple[int, bytes, dict[str, str]]]]


class BlobStoreContract:
    @pytest.fixture
    def blobs(self) -> BlobStore:
        raise NotImplementedError("an adapter's test class must override the `blobs` fixture")

    @pytest.fixture
    def fetch(self) -> Fetch:
        raise NotImplementedError("an adapter's test class must override the `fetch` fixture")

    @pytest.fixture
    def prefix(self) -> str:
        return f"contract-{uuid.uuid4().hex[:12]}/"

    def test_put_get_stat_round_trip(self, blobs: BlobStore, prefix: str) -> None:
        data = bytes(range(256)) * 10
        before = time.time()
        info = blobs.put(prefix + "a/one.bin", data)
        assert info.key == prefix + "a/one.bin" and info.size == len(data)
        assert before - 2 <= info.modified_at <= time.time() + 2  # S3 keeps whole seconds
        assert blobs.get(prefix + "a/one.bin") == data
        assert blobs.stat(prefix + "a/one.bin") == info

    def test_put_replaces(self, blobs: BlobStore, prefix: str) -> None:
        blobs.put(prefix + "x.json", b'{"v": 1}', "application/json")
        info = blobs.put(prefix + "x.json", b'{"v": 22}', "application/json")
        assert blobs.get(prefix + "x.json") == b'{"v": 22}'
        assert info.size == 9
        assert [i.key for i in blobs.list(prefix)] == [prefix + "x.json"]

    def test_missing_blob(self, blobs: BlobStore, prefix: str) -> None:
        with pytest.raises(BlobNotFound):
            blobs.get(prefix + "nothing.bin")
        assert blobs.stat(prefix + "nothing.bin") is None
        assert blobs.delete(prefix + "nothing.bin") is False
        assert blobs.list(prefix) == []

    def test_put_file_streams_and_leaves_the_source(
        self, blobs: BlobStore, prefix: str, tmp_path: Path
    ) -> None:
        source = tmp_path / "big.wav"
        data = os.urandom(3 << 20)
        source.write_bytes(data)
        info = blobs.put_file(prefix + "rec/big.wav", source, "audio/wav")
        assert info.size == len(data)
        assert blobs.get(prefix + "rec/big.wav") == data
        assert source.read_bytes() == data

    def test_list_is_by_prefix_and_ordered(self, blobs: BlobStore, prefix: str) -> None:
        for key in ("b/2", "a/1", "a/3/deep", "ab/4", "b/1"):
            blobs.put(prefix + key, key.encode())
        assert [i.key for i in blobs.list(prefix)] == [
            prefix + k for k in ("a/1", "a/3/deep", "ab/4", "b/1", "b/2")
        ]
        assert [i.key for i in blobs.list(prefix + "a/")] == [prefix + "a/1", prefix + "a/3/deep"]
        assert [i.key for i in blobs.list(prefix + "a")] == [
            prefix + "a/1",
            prefix + "a/3/deep",
            prefix + "ab/4",
        ]
        assert [i.size for i in blobs.list(prefix + "b/")] == [3, 3]

    def test_delete(self, blobs: BlobStore, prefix: str) -> None:
        blobs.put(prefix + "d/x", b"1")
        blobs.put(prefix + "d/y", b"2")
        assert blobs.delete(prefix + "d/x") is True
        assert blobs.delete(prefix + "d/x") is False
        assert [i.key for i in blobs.list(prefix)] == [prefix + "d/y"]

    def test_invalid_keys_are_refused(self, blobs: BlobStore, prefix: str) -> None:
        for key in (
            "../escape",
            prefix + "a//b",
            "/absolute",
            prefix + "a/./b",
            prefix + "a/",
            prefix + "a/../../b",
            prefix + "sp ace",
        ):
            with pytest.raises(ValueError):
                blobs.put(key, b"x")

    def test_key_segment_makes_any_value_one_safe_segment(
        self, blobs: BlobStore, prefix: str
    ) -> None:
        values = ["../../etc/passwd", ".", "..", "", "a/b", "CA 1:2?x=1#y", "ünï"]
        keys = [prefix + key_segment(v) + "/file" for v in values]
        assert len(set(keys)) == len(values)
        for n, key in enumerate(keys):
            blobs.put(key, str(n).encode())
        listed = blobs.list(prefix)
        assert sorted(i.key for i in listed) == sorted(keys)
        assert all(i.key.count("/") == prefix.count("/") + 1 for i in listed)

    def test_purge_older_than(self, blobs: BlobStore, prefix: str) -> None:
        old = [blobs.put(prefix + f"p/{n}", b"x") for n in range(3)]
        other = blobs.put(prefix + "q/0", b"y")
        assert blobs.purge_older_than(prefix + "p/", min(i.modified_at for i in old) - 1) == 0
        assert len(blobs.list(prefix)) == 4
        assert blobs.purge_older_than(prefix + "p/", max(i.modified_at for i in old) + 1) == 3
        assert [i.key for i in blobs.list(prefix)] == [other.key]

    async def test_signed_url_fetches_the_blob(
        self, blobs: BlobStore, prefix: str, fetch: Fetch
    ) -> None:
        data = b"RIFF" + os.urandom(5000)
        blobs.put(prefix + "rec/call.wav", data, "audio/wav")
        url = blobs.signed_url(prefix + "rec/call.wav", 300, "CA1-0.wav")
        status, body, headers = await fetch(url)
        assert status == 200 and body == data
        assert 'filename="CA1-0.wav"' in headers.get("content-disposition", "")
