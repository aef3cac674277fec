"""Downloads of official class files against a fake bucket: a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.download import (
    DownloadError,
    class_url,
    download_classes,
    local_name,
    official_categories,
    resolve_classes,
)
from pipeline.strokes import load_sketchrnn_npz, write_sketchrnn_npz
from tests.bucket_server import FakeBucket


def _payload(seed: int, size: int = 300_000) -> bytes:
    """Return ``size`` random bytes that start as a zip archive does (what a ``.npz`` must)."""
    return b"PK\x03\x04" + np.random.default_rng(seed).integers(0, 256, size - 4, dtype=np.uint8).tobytes()


def _ndjson_payload(seed: int, size: int = 300_000) -> bytes:
    """Return about ``size`` bytes of JSON lines (what a ``.ndjson`` must hold)."""
    rng = np.random.default_rng(seed)
    lines = [f'{{"word": "cat", "key_id": "{i}", "n": {rng.integers(1 << 30)}}}\n'.encode() for i in range(size // 40)]
    return b"".join(lines)


@pytest.fixture
def bucket():
    with FakeBucket() as server:
        yield server


def _fetch(bucket, names, dest, file_format="sketchrnn", **kwargs):
    kwargs = {"backoff_seconds": 0.01, "retries": 3, **kwargs}
    return download_classes(names, file_format, dest, base_url=bucket.url, **kwargs)


def test_the_official_list_ships_with_the_package():
    names = official_categories()
    assert len(names) == len(set(names)) == 345
    assert {"The Eiffel Tower", "cat", "zigzag", "aircraft carrier"} <= set(names)


def test_urls_follow_the_bucket_layout_and_encode_spaces():
    base = "https://example.org/quickdraw_dataset"
    assert class_url(base, "sketchrnn", "The Eiffel Tower") == f"{base}/sketchrnn/The%20Eiffel%20Tower.npz"
    assert class_url(base + "/", "sketchrnn-full", "cat") == f"{base}/sketchrnn/cat.full.npz"
    assert class_url(base, "simplified", "alarm clock") == f"{base}/full/simplified/alarm%20clock.ndjson"
    assert class_url(base, "raw", "cat") == f"{base}/full/raw/cat.ndjson"
    assert local_name("sketchrnn-full", "cat") == "cat.full.npz"


def test_classes_are_checked_against_the_official_list():
    assert resolve_classes(["cat", "The Eiffel Tower"]) == ["cat", "The Eiffel Tower"]
    assert resolve_classes(None, 3) == sorted(official_categories())[:3]
    assert len(resolve_classes(None)) == 345
    with pytest.raises(ValueError, match="'unicorn' is not a Quick, Draw! category"):
        resolve_classes(["cat", "unicorn"])


def test_parallel_files_with_spaces_in_their_names_arrive_whole(bucket, tmp_path):
    names = ["The Eiffel Tower", "alarm clock", "cat", "dog", "zigzag"]
    for seed, name in enumerate(names):
        bucket.put(f"sketchrnn/{name}.npz", _payload(seed), hashes=("md5",) if seed % 2 else ("crc32c",))
    files = _fetch(bucket, names, tmp_path, workers=4)
    assert [f.name for f in files] == names
    for seed, (name, downloaded) in enumerate(zip(names, files, strict=True)):
        assert (tmp_path / f"{name}.npz").read_bytes() == _payload(seed)
        assert downloaded.fetched_bytes == downloaded.size == 300_000 and downloaded.attempts == 1
    assert not list(tmp_path.glob("*.part"))


def test_a_dropped_connection_resumes_with_a_range_request(bucket, tmp_path):
    bucket.put("sketchrnn/cat.npz", _payload(1), drop_after=120_000)
    [downloaded] = _fetch(bucket, ["cat"], tmp_path)
    assert (tmp_path / "cat.npz").read_bytes() == _payload(1)
    first, second = bucket.gets("sketchrnn/cat.npz")
    assert first.range is None
    resumed_at = int(second.range.removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= 120_000  # what had arrived in whole chunks is kept
    assert downloaded.fetched_bytes == 300_000  # ... and not fetched again


def test_a_part_file_left_by_an_interrupted_run_is_resumed(bucket, tmp_path):
    bucket.put("full/simplified/cat.ndjson", _ndjson_payload(2)[:300_000])
    (tmp_path / "cat.ndjson.part").write_bytes(_ndjson_payload(2)[:50_000])
    [downloaded] = _fetch(bucket, ["cat"], tmp_path, file_format="simplified")
    assert (tmp_path / "cat.ndjson").read_bytes() == _ndjson_payload(2)[:300_000]
    assert [r.range for r in bucket.gets("full/simplified/cat.ndjson")] == ["bytes=50000-"]
    assert downloaded.fetched_bytes == 250_000


def test_server_errors_are_retried_with_backoff(bucket, tmp_path):
    bucket.put("sketchrnn/cat.npz", _payload(3), failures=2)
    [downloaded] = _fetch(bucket, ["cat"], tmp_path)
    assert downloaded.attempts == 3
    assert (tmp_path / "cat.npz").read_bytes() == _payload(3)


def test_a_server_that_keeps_failing_gives_up_naming_the_class_and_url(bucket, tmp_path):
    bucket.put("sketchrnn/cat.npz", _payload(3), failures=10)
    with pytest.raises(DownloadError, match=r"^cat: http://127\.0\.0\.1:\d+/sketchrnn/cat\.npz still failing after 3"):
        _fetch(bucket, ["cat"], tmp_path, retries=2)
    assert not (tmp_path / "cat.npz").exists()


def test_a_missing_file_stops_with_one_line_naming_class_and_url(bucket, tmp_path):
    bucket.put("sketchrnn/cat.npz", _payload(4))
    with pytest.raises(DownloadError) as raised:
        _fetch(bucket, ["cat", "The Mona Lisa"], tmp_path, workers=1)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("The Mona Lisa: not found (HTTP 404) at http://127.0.0.1:")
    assert message.endswith("/sketchrnn/The%20Mona%20Lisa.npz")
    assert not (tmp_path / "The Mona Lisa.npz").exists()


def test_a_hash_mismatch_leaves_no_file_under_the_final_name(bucket, tmp_path):
    bucket.put("sketchrnn/cat.npz", _payload(5), wrong_md5=True)
    with pytest.raises(DownloadError, match=r"^cat: md5 mismatch .* for http://127\.0\.0\.1:\d+/sketchrnn/cat\.npz$"):
        _fetch(bucket, ["cat"], tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_complete_files_are_never_fetched_twice(bucket, tmp_path):
    for seed, name in enumerate(["cat", "dog"]):
        bucket.put(f"sketchrnn/{name}.npz", _payload(seed))
    first = _fetch(bucket, ["cat", "dog"], tmp_path)
    assert len(bucket.requests) == 2
    second = _fetch(bucket, ["cat", "dog"], tmp_path)
    assert len(bucket.requests) == 2  # no request at all the second time
    assert all(f.skipped for f in second) and not any(f.skipped for f in first)


def test_ingest_downloads_the_missing_class_files_first(bucket, tmp_path):
    from pipeline.config import Settings, check_settings
    from pipeline.dataset import read_info
    from pipeline.stages.data import download, ingest
    from pipeline.synthetic import draw_sketch

    rng = np.random.default_rng(0)
    for name, shape in (("cat", "circle"), ("The Eiffel Tower", "triangle")):
        npz = tmp_path / "bucket" / f"{name}.npz"
        write_sketchrnn_npz(
            npz, {s: [draw_sketch(shape, rng) for _ in range(n)] for s, n in (("train", 6), ("valid", 2), ("test", 2))}
        )
        bucket.put(f"sketchrnn/{name}.npz", npz.read_bytes())
    settings = check_settings(
        Settings(source="sketchrnn", download=True, download_base_url=bucket.url, work_dir=str(tmp_path / "work"),
                 classes=("cat", "The Eiffel Tower"), retry_backoff_seconds=0.01)
    )  # fmt: skip
    assert settings.data_dir == str(tmp_path / "work" / "raw" / "sketchrnn")
    assert [f.name for f in download(settings)] == ["cat", "The Eiffel Tower"]
    info = read_info(ingest(settings))
    assert info.classes == ["cat", "The Eiffel Tower"]
    assert info.num_sketches == 20
    assert len(load_sketchrnn_npz(tmp_path / "work" / "raw" / "sketchrnn" / "cat.npz")["train"]) == 6


@pytest.fixture
def hostile_server():
    """A real HTTP server on 127.0.0.1 whose answers a test sets: ``(status, headers, body chunks)``,
    where the chunks may be an endless generator (sent at ``pace`` seconds apart)."""
    import http.server
    import threading
    import time

    answer = {"status": 200, "headers": {}, "chunks": lambda: iter(()), "pace": 0.0}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # no Content-Length needed: the body ends when the connection does

        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(answer["status"])
            for key, value in answer["headers"].items():
                self.send_header(key, value)
            self.end_headers()
            try:
                for chunk in answer["chunks"]():
                    self.wfile.write(chunk)
                    time.sleep(answer["pace"])
            except (BrokenPipeError, ConnectionResetError):  # the client gave up: as it should
                pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", answer
    server.shutdown()
    server.server_close()


def _endless(chunk: bytes):
    def chunks():
        while True:
            yield chunk

    return chunks


def test_an_endless_body_without_a_length_stops_at_the_cap_and_keeps_nothing(hostile_server, tmp_path):
    import time

    url, answer = hostile_server
    answer["chunks"] = _endless(b"PK\x03\x04" + b"x" * 65_532)
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"^cat: over 2,000,000 bytes and still coming; not kept"):
        download_classes(["cat"], "sketchrnn", tmp_path, base_url=url, max_bytes=2_000_000, retries=0)
    assert time.monotonic() - started < 30
    assert list(tmp_path.iterdir()) == []


def test_a_trickling_server_is_given_up_at_the_deadline(hostile_server, tmp_path):
    import time

    url, answer = hostile_server
    answer["chunks"], answer["pace"] = _endless(b"PK\x03\x04"), 0.05  # every read in time, never done
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"^cat: not done within its deadline; the part is kept to resume"):
        download_classes(["cat"], "sketchrnn", tmp_path, base_url=url, deadline_seconds=2, retries=0)
    assert 1.5 < time.monotonic() - started < 30
    assert not (tmp_path / "cat.npz").exists()


@pytest.mark.parametrize("file_format", ["sketchrnn", "simplified"])
def test_an_html_page_for_a_class_file_is_not_kept_under_its_name(hostile_server, tmp_path, file_format):
    url, answer = hostile_server
    page = b"<!DOCTYPE html><html><body>Sign in to continue</body></html>\n"
    answer["headers"] = {"Content-Length": str(len(page))}
    answer["chunks"] = lambda: iter([page])
    with pytest.raises(
        DownloadError, match=r"answered with something that is not (a zip archive|JSON lines).*<!DOCTYPE"
    ):
        download_classes(["cat"], file_format, tmp_path, base_url=url, retries=0)
    assert list(tmp_path.iterdir()) == []


def test_a_class_file_kept_by_an_earlier_release_that_is_not_its_kind_is_fetched_again(bucket, tmp_path):
    (tmp_path / "cat.npz").write_bytes(b"<html>error</html>")
    bucket.put("sketchrnn/cat.npz", _payload(9))
    [downloaded] = _fetch(bucket, ["cat"], tmp_path)
    assert not downloaded.skipped and (tmp_path / "cat.npz").read_bytes() == _payload(9)
