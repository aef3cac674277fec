"""``benchmarks/full_scale.py`` at a small size: the whole flow on tiled real drawings, every stage timed,
evaluation's memory compared at two test sizes, every architecture's artifacts measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REAL_DATA = ROOT.parent / "shared" / "data" / "quickdraw-raw-345"


@pytest.mark.slow
@pytest.mark.skipif(not REAL_DATA.is_dir(), reason=f"real Quick, Draw! sample not found at {REAL_DATA}")
def test_the_full_scale_benchmark_runs_the_whole_flow_at_a_small_size(tmp_path):
    argv = [sys.executable, str(ROOT / "benchmarks" / "full_scale.py"), "--classes", "12", "--train", "150",
            "--valid", "300", "--test", "250", "--architectures", "wavenet,gru", "--steps-per-epoch", "10",
            "--work", str(tmp_path / "work"), "--results", str(tmp_path), "--name", "small"]  # fmt: skip
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "small.json").read_text())
    stages = {row["stage"]: row for row in result["rows"]}
    for stage in ("ingest", "validate", "preprocess", "train", "evaluate", "register", "promote", "whole flow"):
        assert stage in stages, stage
    assert stages["train"]["task_runs"] == 2 and stages["evaluate"]["task_runs"] == 2
    assert 0 < stages["whole flow"]["peak_rss_mb"] < 6000
    # the two architectures trained at once (free memory allows): the stage's wall is below its summed time
    assert stages["train"]["wall_s"] < stages["train"]["task_s"]
    tenth, whole = result["evaluation"]
    assert (tenth["sketches"], whole["sketches"]) == (300, 3000)
    assert whole["accuracy"] > 1 / 12  # better than chance after 10 batches
    assert whole["model_predict_per_s"] > 0 and whole["sketches_per_s"] > 0
    assert whole["peak_rss_mb"] / tenth["peak_rss_mb"] < 1.3  # a chunk in memory, not the split
    assert sorted(row["architecture"] for row in result["artifacts"]) == ["gru", "wavenet"]
    assert all(0 < row["artifacts_mb"] < 50 for row in result["artifacts"])
    assert "TASK train-wavenet" in done.stdout  # the task runs, each from the flow's start
