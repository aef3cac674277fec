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
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


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
    bucket.put("full/simplified/cat.ndjson", _payload(2))
    (tmp_path / "cat.ndjson.part").write_bytes(_payload(2)[:50_000])
    [downloaded] = _fetch(bucket, ["cat"], tmp_path, file_format="simplified")
    assert (tmp_path / "cat.ndjson").read_bytes() == _payload(2)
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
