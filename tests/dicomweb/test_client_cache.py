"""The retrieval cache (DESIGN.md D8): keys, principals, LRU cap, verification, atomicity."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from dicomweb_helpers import client_for, multipart_body

from imagingkit.auth import AuthMap, BearerToken
from imagingkit.cache import Cache, CacheKey
from imagingkit.cli import main as cli_main
from imagingkit.errors import ConfigError

ORIGIN = "http://127.0.0.1:9"


def key(*uids: str, principal: str = "anonymous", representation: str = "x") -> CacheKey:
    return CacheKey(principal, ORIGIN, uids, representation)


def test_hit_miss_and_representation(tmp_path: Path) -> None:
    cache = Cache(tmp_path, max_bytes=10**6)
    assert cache.get(key("1.2")) is None
    assert cache.put(key("1.2"), b"payload")
    assert cache.get(key("1.2")) == b"payload"
    assert cache.get(key("1.2", representation="y")) is None  # another representation
    assert cache.get(key("1.3")) is None


def test_entries_are_never_shared_across_principals(tmp_path: Path) -> None:
    cache = Cache(tmp_path, max_bytes=10**6)
    cache.put(key("1.2", principal="alice"), b"alice's")
    assert cache.get(key("1.2", principal="bob")) is None
    assert cache.path_for(key("1.2", principal="alice")).parent.parent != (
        cache.path_for(key("1.2", principal="bob")).parent.parent
    )


def test_lru_eviction_keeps_recently_used_entries(tmp_path: Path) -> None:
    cache = Cache(tmp_path, max_bytes=3000)
    for name in ("a", "b", "c"):
        cache.put(key(name), bytes(700))
        time.sleep(0.01)  # distinct modification times
    assert cache.get(key("a")) is not None  # "a" is now the most recent
    time.sleep(0.01)
    cache.put(key("d"), bytes(700))  # over 3000 bytes with its metadata: evict
    assert cache.get(key("b")) is None
    assert cache.get(key("a")) is not None and cache.get(key("d")) is not None
    assert cache.info().bytes <= 3000
    assert not cache.put(key("huge"), bytes(5000))  # larger than the cap: not stored


def test_a_corrupt_entry_is_detected_removed_and_missed(tmp_path: Path) -> None:
    cache = Cache(tmp_path, max_bytes=10**6)
    cache.put(key("1.2"), b"0123456789" * 100)
    path = cache.path_for(key("1.2"))
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    path.write_bytes(bytes(data))
    assert cache.get(key("1.2")) is None
    assert not path.exists()
    cache.put(key("1.3"), b"ok")
    cache.path_for(key("1.3")).write_bytes(b"truncated")
    assert cache.verify() == [cache.path_for(key("1.3"))]


def test_arrays_are_memory_mapped_copy_on_write(tmp_path: Path) -> None:
    cache = Cache(tmp_path, max_bytes=10**8)
    writer = cache.array_writer(key("vol"), (4, 3, 2), np.int16)
    assert writer is not None
    writer.array[:] = np.arange(24, dtype=np.int16).reshape(4, 3, 2)
    writer.resize(3)
    mine = writer.commit({"note": "three slices"})
    cache.flush()
    array, meta = cache.get_array(key("vol"))  # type: ignore[misc]
    assert meta == {"note": "three slices"}
    np.testing.assert_array_equal(array, np.arange(18, dtype=np.int16).reshape(3, 3, 2))
    mine[0, 0, 0] = 99
    array[1, 0, 0] = 77
    again, _ = cache.get_array(key("vol"))  # type: ignore[misc]
    assert again[0, 0, 0] == 0 and again[1, 0, 0] == 6


def test_info_and_clear_through_the_cli(tmp_path: Path, capsys) -> None:
    cache = Cache(tmp_path / "c", max_bytes=10**6)
    cache.put(key("1.2"), b"abc")
    cache.put(CacheKey("anonymous", "https://other.example", ("1.2",), "x"), b"defg")
    info = cache.info()
    assert info.entries == 2
    assert set(info.by_origin) == {ORIGIN, "https://other.example"}
    assert cli_main(["cache", "info", "--cache-dir", str(tmp_path / "c")]) == 0
    shown = capsys.readouterr().out
    assert "entries: 2" in shown and "https://other.example: 1 entries" in shown
    assert cli_main(["cache", "clear", "--cache-dir", str(tmp_path / "c")]) == 0
    assert "removed 2 entries" in capsys.readouterr().out
    assert cache.info().entries == 0


def test_a_bad_size_cap_is_a_config_error(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(ConfigError):
        Cache(tmp_path, max_bytes=0)
    monkeypatch.setenv("IMAGINGKIT_CACHE_MAX_BYTES", "lots")
    with pytest.raises(ConfigError, match="lots"):
        Cache(tmp_path)


def test_client_cache_isolates_principals_on_one_server(double_server, ct_data, cache) -> None:
    """Two credentials for the same origin: the second one is not served the first's copy."""
    _, plain, _ = ct_data
    body, content_type = multipart_body(
        [({"Content-Type": "application/dicom"}, plain.payloads[0])], "application/dicom"
    )

    def respond(handler, seen):
        handler.set_header("Content-Type", content_type)
        handler.write(body)

    base, double = double_server(respond)
    alice = client_for(base, cache=cache, auth=AuthMap({base: BearerToken("a", name="alice")}))
    bob = client_for(base, cache=cache, auth=AuthMap({base: BearerToken("b", name="bob")}))
    for client in (alice, alice, bob, bob):
        assert client.retrieve_instance("1.2.3", "1.2.3.4", "1.2.3.4.5") == plain.payloads[0]
    assert len(double.seen("/instances/")) == 2  # one miss each, then hits
    assert [r.headers["authorization"] for r in double.seen()] == ["Bearer a", "Bearer b"]


_PULL_SCRIPT = textwrap.dedent(
    """
    import sys
    from imagingkit.cache import Cache
    from imagingkit.config import Settings
    from imagingkit.dicomweb.client import DicomWebClient
    base, root, *refs = sys.argv[1:]
    client = DicomWebClient(base, cache=Cache(root, max_bytes=10**9),
                            settings=Settings(timeout=60, concurrency=2))
    pairs = [tuple(r.split("/")) for r in refs]
    result = client.fetch_series(pairs, progress=False)
    client.cache.flush()
    print("ok", len(result.results), len(result.failures), flush=True)
    """
)


def test_kill_9_mid_pull_leaves_no_half_written_entry(double_server, ct_data, tmp_path) -> None:
    """A pull killed with SIGKILL mid-write: re-run completes, every cached file verifies."""
    _, plain, _ = ct_data
    body, content_type = multipart_body(
        [({"Content-Type": "application/dicom"}, p) for p in plain.payloads], "application/dicom"
    )
    series = [f"1.2.3.{n}" for n in range(4)]

    async def respond(handler, seen):
        import asyncio

        if "/series/" not in seen.path or seen.path.endswith("/series"):
            handler.set_status(204)
            return
        handler.set_header("Content-Type", content_type)
        step = len(body) // 8
        for start in range(0, len(body), step):  # slow: the kill lands mid-series
            handler.write(body[start : start + step])
            await handler.flush()
            await asyncio.sleep(0.15)

    base, _ = double_server(respond)
    root = tmp_path / "cache"
    script = tmp_path / "pull.py"
    script.write_text(_PULL_SCRIPT)
    command = [sys.executable, str(script), base, str(root), *(f"1.2.3/{s}" for s in series)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if list((root / "tmp").glob("*.tmp")):  # a volume is being written
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        time.sleep(0.3)  # let it write part of the entry
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert list((root / "tmp").glob("*.tmp")), "the kill did not land mid-write"
    # the half-written file is not an entry: whatever entries exist verify
    assert Cache(root, max_bytes=10**9).verify() == []
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.split() == ["ok", "4", "0"]
    cache = Cache(root, max_bytes=10**9)
    assert cache.verify() == []  # every cached file verifies
    assert cache.info().entries == 4
    assert not list((root / "tmp").glob("*.tmp"))  # the dead process's temp file is gone
