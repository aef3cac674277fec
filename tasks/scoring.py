"""Scoring tasks: score-part and finish-scoring (wrapping :mod:`pipeline.stages.scoring`)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from pipeline.config import Settings
from pipeline.scoring.engine import PartResult
from pipeline.stages import scoring
from pipeline.stages.scoring import ScoreSummary


@task(name="score-part", cache_policy=NO_CACHE, task_run_name="score-part-{index}")
def score_part_task(
    settings: Settings, name: str, version: str, files: list[str], index: int, output: str, top_k: int
) -> PartResult:
    """Score a contiguous run of input files into one Parquet part (streamed, a chunk at a time)."""
    return scoring.run_part(settings, name, version, files, index, output, top_k)


@task(name="finish-scoring", cache_policy=NO_CACHE)
def finish_scoring_task(
    settings: Settings, name: str, version: str, inputs: list[str], output: str, results: list[PartResult], top_k: int
) -> ScoreSummary:
    """Merge the parts into the scores file and record the inference run in MLflow."""
    return scoring.finish(settings, name, version, inputs, output, results, top_k)
