"""Stage outputs are published whole: a reader never sees a half-written folder."""

import threading

import pytest

from pipeline.files import published_dir


def _leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_a_finished_block_puts_the_folder_in_place(tmp_path):
    final = tmp_path / "out"
    with published_dir(final) as staging:
        assert staging.parent == tmp_path and not final.exists()
        (staging / "a.txt").write_text("new")
    assert (final / "a.txt").read_text() == "new"
    assert _leftovers(tmp_path) == []


def test_a_failed_block_leaves_the_old_folder_and_no_staging(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "a.txt").write_text("old")
    with pytest.raises(RuntimeError), published_dir(final) as staging:
        (staging / "a.txt").write_text("half")
        raise RuntimeError("killed mid-way")
    assert (final / "a.txt").read_text() == "old"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(("replace", "expected"), [(True, "new"), (False, "old")])
def test_replace_decides_whether_an_existing_folder_is_kept(tmp_path, replace, expected):
    final = tmp_path / "out"
    final.mkdir()
    (final / "a.txt").write_text("old")
    with published_dir(final, replace=replace) as staging:
        (staging / "a.txt").write_text("new")
    assert (final / "a.txt").read_text() == expected
    assert _leftovers(tmp_path) == []


def test_concurrent_writers_of_one_folder_never_mix_their_files(tmp_path):
    final = tmp_path / "out"
    errors = []

    def writer(name: str) -> None:
        try:
            for i in range(60):  # busy enough that writers land between each other's renames
                with published_dir(final) as staging:
                    for part in ("a", "b", "c"):
                        (staging / part).write_text(f"{name}-{i}")
        except Exception as exc:  # surfaced below: a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in ("v", "w", "x", "y", "z")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len({(final / part).read_text() for part in ("a", "b", "c")}) == 1  # one writer's whole folder
    assert _leftovers(tmp_path) == []
