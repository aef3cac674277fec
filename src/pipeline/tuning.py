"""Hyperparameter search with Optuna, its study kept in MLflow, its winner exported as a settings file.

The study is MLflow's Optuna storage (:class:`mlflow.optuna.MlflowStorage`): the study is one MLflow run
named after it, and every trial a run nested under it, with the trial's parameters, its epoch metrics
and its objective. A stopped study resumes: the next ``tune`` with the same study name loads it and runs
only the trials still missing. Each trial trains with the pipeline's own training loop, reports its
validation cross-entropy after every epoch, and stops early when Optuna's median pruner calls it
hopeless. The objective (minimised) is the best validation cross-entropy, measured without label
smoothing so that trials with and without it compare.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from pipeline import progress, tracking
from pipeline.config import Settings

OBJECTIVE = "val_cross_entropy"

# name -> (kind, low, high, log) or (categorical, choices); settings every architecture shares
SETTINGS_SPACE: dict[str, tuple] = {
    "learning_rate": ("float", 3e-4, 1e-2, True),
    "weight_decay": ("float", 1e-4, 0.1, True),
    "label_smoothing": ("float", 0.0, 0.2, False),
    "ema_momentum": ("categorical", (0.0, 0.99, 0.999)),
    "augment_scale": ("float", 0.0, 0.3, False),
    "augment_rotation": ("float", 0.0, 20.0, False),
    "augment_jitter": ("float", 0.0, 0.05, False),
    "augment_stroke_dropout": ("float", 0.0, 0.2, False),
    "augment_reverse_strokes": ("float", 0.0, 0.5, False),
    "augment_point_dropout": ("float", 0.0, 0.3, False),
    "augment_shuffle_strokes": ("float", 0.0, 0.5, False),
}
# a convolutional stem's filters, as text (Optuna's choices are plain values): "none" or "48-64"; the
# transformer's dilated stem and wavenet's dilation rates likewise ("1-2-4-8")
_STEM = ("categorical", ("none", "32-48", "48-64"))
_RECURRENT = {
    "units": ("categorical", (32, 64, 128)),
    "num_layers": ("int", 1, 3, False),
    "pooling": ("categorical", ("last", "mean", "mean_max")),
    "stem": _STEM,
    "bidirectional": ("categorical", (False, True)),
}
# model hyperparameters per architecture (every one also gets dropout, positions and raster_size)
MODEL_SPACE: dict[str, dict[str, tuple]] = {
    "simple_rnn": {**_RECURRENT, "activation": ("categorical", ("tanh", "relu"))},
    "lstm": _RECURRENT,
    "gru": _RECURRENT,
    "bilstm": {
        **{k: v for k, v in _RECURRENT.items() if k != "bidirectional"},  # always both ways
        "units": ("categorical", (32, 48, 64, 96)),
    },
    "conv_lstm": {**{k: v for k, v in _RECURRENT.items() if k != "stem"}, "kernel_size": ("categorical", (3, 5))},
    "wavenet": {
        "filters": ("categorical", (32, 48, 64, 96)),
        "kernel_size": ("categorical", (2, 3)),
        "dilation_rates": ("categorical", ("1-2-4-8", "1-2-4-8-16", "1-2-4-8-16-32", "1-2-4-8-1-2-4-8")),
        "pooling": ("categorical", ("mean", "mean_max")),
        "gated": ("categorical", (False, True)),
        "norm": ("categorical", (False, True)),
        # the blocks after which the steps are halved: none, the first (later blocks on half the steps),
        # the first and the second (the third block on, on a quarter)
        "halve_after": ("categorical", ("none", "1", "1-2")),
    },
    "transformer": {
        "dim": ("categorical", (32, 64, 96)),
        "num_layers": ("int", 1, 3, False),
        "pooling": ("categorical", ("mean", "mean_max")),
        "stem": _STEM,
        "norm_first": ("categorical", (False, True)),
        "stem_dilations": ("categorical", ("none", "1-2-4-8")),
    },
}
# the drawn text choices that stand for a list of numbers -> the builder argument they become
_LIST_CHOICES = {
    "model_stem": "stem_filters",
    "model_stem_dilations": "stem_dilations",
    "model_dilation_rates": "dilation_rates",
    "model_halve_after": "halve_after",
}
_MODEL_COMMON = {
    "dropout": ("float", 0.0, 0.5, False),
    "positions": ("categorical", (False, True)),
    "raster_size": ("categorical", (0, 16, 28)),  # 0: no picture of the sketch beside the sequence
}


def search_space(architecture: str) -> dict:
    """Return the Optuna distributions of a study of ``architecture``: the shared settings, and its model
    hyperparameters as ``model_<name>``. All are drawn when a trial is asked for, before it runs."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    def distribution(spec: tuple):
        if spec[0] == "float":
            return FloatDistribution(spec[1], spec[2], log=spec[3])
        if spec[0] == "int":
            return IntDistribution(spec[1], spec[2], log=spec[3])
        return CategoricalDistribution(list(spec[1]))

    space = {name: distribution(spec) for name, spec in SETTINGS_SPACE.items()}
    for name, spec in {**MODEL_SPACE[architecture], **_MODEL_COMMON}.items():
        space[f"model_{name}"] = distribution(spec)
    return space


def settings_of(params: Mapping[str, Any], settings: Settings, architecture: str) -> Settings:
    """Return ``settings`` with a trial's parameters applied (model hyperparameters over the configured
    ones of ``architecture``), training that architecture only."""
    model = dict(settings.models.get(architecture, {}))
    for name, value in params.items():
        if name in _LIST_CHOICES:  # text choices of a list of numbers
            model[_LIST_CHOICES[name]] = [] if value == "none" else [int(n) for n in value.split("-")]
        elif name.startswith("model_"):
            model[name.removeprefix("model_")] = value
    shared = {name: v for name, v in params.items() if not name.startswith("model_")}
    return settings.replace(**shared, models={**settings.models, architecture: model}, architectures=(architecture,))


@dataclasses.dataclass(frozen=True)
class StudyRef:
    """Where a study lives: the tracking store, the experiment and the study's name (its parent run's name)."""

    tracking_uri: str
    experiment_id: str
    name: str
    architecture: str
    seed: int = 42
    startup_trials: int = 3  # trials before the sampler models the space and the pruner compares
    warmup_epochs: int = 1  # epochs of every trial before it may be pruned (tune: a quarter of the epochs)


def check_study_name(name: str) -> str:
    """Return ``name`` if it can name a study (an MLflow run name found by a search filter), else raise."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,200}", name):
        raise ValueError(f"study name {name!r} may hold only letters, digits, '-', '_' and '.' (at most 200)")
    return name


def default_study_name(settings: Settings, architecture: str) -> str:
    """Return the study name ``tune`` uses unless given one: ``tune-<architecture>-<source>``."""
    return f"tune-{architecture}-{settings.source}"


def open_study(ref: StudyRef, create: bool = False, seed_offset: int = 0):
    """Return the Optuna study of ``ref``, stored in MLflow; with ``create``, start it when it is new.

    The sampler is seeded by the study's seed plus ``seed_offset`` (the trials it already has, when
    a study resumes), so a resumed study does not draw its first trials' random parameters again.
    """
    import mlflow
    import optuna
    from mlflow.optuna import MlflowStorage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # MlflowStorage makes a client for the process's tracking URI (without one set, it would create a
    # store in the working folder), then every call goes through it: it gets the store's client that
    # waits out a locked SQLite store, which trials writing at once meet
    mlflow.set_tracking_uri(ref.tracking_uri)
    storage = MlflowStorage(experiment_id=ref.experiment_id)
    client = tracking.client_for(ref.tracking_uri)
    if hasattr(storage, "_mlflow_client"):
        storage._mlflow_client = client
    sampler = optuna.samplers.TPESampler(seed=ref.seed + seed_offset, n_startup_trials=ref.startup_trials)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=ref.startup_trials, n_warmup_steps=ref.warmup_epochs)
    exists = client.search_runs(
        [ref.experiment_id], f"tags.mlflow.runName = '{ref.name}' and tags.optuna.study_direction != ''", max_results=1
    )
    if create and not exists:
        # (MLflow's storage never reports a study as existing, so create_study's load_if_exists would
        # start a second one of the same name: whether it exists is asked here)
        return optuna.create_study(
            study_name=ref.name, storage=storage, sampler=sampler, pruner=pruner, direction="minimize"
        )
    return optuna.load_study(study_name=ref.name, storage=storage, sampler=sampler, pruner=pruner)


def prepare_study(settings: Settings, architecture: str, name: str | None = None, **options) -> StudyRef:
    """Create (or find) the study's experiment and study run; mark trials that a stopped ``tune`` left
    running as failed, so that they are run again; return the study's reference."""
    from optuna.trial import TrialState

    # a slow start is not hopelessness: on real drawings, pruning from the second of 20 epochs stopped
    # 7 of 20 trials before their accuracy had begun to rise
    options.setdefault("warmup_epochs", max(1, settings.epochs // 4))
    client = tracking.client_for(settings.resolved_tracking_uri)
    experiment_id = tracking.ensure_experiment(client, settings.experiment_name, settings.artifact_location)
    ref = StudyRef(
        settings.resolved_tracking_uri,
        experiment_id,
        check_study_name(name or default_study_name(settings, architecture)),
        architecture,
        seed=settings.seed,
        **options,
    )
    study = open_study(ref, create=True)
    client.set_tag(study._study_id, "architecture", architecture)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    return ref


def finished_trials(ref: StudyRef) -> int:
    """Return how many of the study's trials ended (completed or pruned)."""
    from optuna.trial import TrialState

    return len(open_study(ref).get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _pruning_callback(trial):
    import keras

    class ReportAndPrune(keras.callbacks.Callback):
        """Reports every epoch's objective to Optuna and stops a trial the pruner calls hopeless."""

        async_safe = True  # no batch hooks

        def __init__(self):
            super().__init__()
            self.best = math.inf
            self.pruned = False

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            # without label smoothing there is no separate cross-entropy metric: the loss is it
            value = float(logs.get(OBJECTIVE, logs.get("val_loss", math.inf)))
            if math.isfinite(value):
                self.best = min(self.best, value)
            trial.report(value if math.isfinite(value) else 1e9, epoch)
            if trial.should_prune():
                self.pruned = True
                self.model.stop_training = True

    return ReportAndPrune()


@dataclasses.dataclass(frozen=True)
class AskedTrial:
    """A trial the study has handed out, with every parameter already drawn."""

    number: int
    trial_id: str  # MLflow's storage: the trial's run id
    params: dict[str, Any]


def ask_trial(study, architecture: str) -> AskedTrial:
    """Ask ``study`` for a trial with all of :func:`search_space` drawn now (one sampler draws every
    trial of a flow run, so trials handed out together still differ)."""
    trial = study.ask(fixed_distributions=search_space(architecture))
    return AskedTrial(trial.number, trial._trial_id, dict(trial.params))


def run_trial(settings: Settings, ref: StudyRef, asked: AskedTrial, features_dir: Path) -> dict[str, Any]:
    """Train an asked trial on ``features_dir``, reporting each epoch to the study (which may prune it),
    and tell the study how it ended; return its number, state, objective and parameters."""
    import optuna
    from optuna.trial import TrialState

    from pipeline.stages.training import training_config
    from pipeline.training import train_model

    study = open_study(ref)
    trial = optuna.trial.Trial(study, asked.trial_id)
    client = tracking.client_for(ref.tracking_uri)
    client.set_tag(asked.trial_id, "mlflow.runName", f"{ref.architecture}-trial-{asked.number}")
    client.set_tag(asked.trial_id, "architecture", ref.architecture)
    show = progress.enabled(settings.progress)
    name = f"trial {asked.number}"
    try:
        config = training_config(settings_of(asked.params, settings, ref.architecture), ref.architecture)
        reporter = _pruning_callback(trial)
        out_dir = Path(settings.work_dir) / "tuning" / ref.name / f"trial-{asked.number}"
        callbacks = [tracking.epoch_logger(client, asked.trial_id), reporter]
        train_model(
            config, features_dir, out_dir, callbacks=callbacks + ([progress.training_progress(name)] if show else [])
        )
    except Exception as exc:
        study.tell(trial, state=TrialState.FAIL)
        progress.note(f"{name} FAILED: {type(exc).__name__}: {str(exc)[:200]}", show)
        raise
    result = {"number": asked.number, "value": reporter.best, "params": asked.params}
    if reporter.pruned:
        study.tell(trial, state=TrialState.PRUNED)
        result["state"] = "PRUNED"
    elif not math.isfinite(reporter.best):
        study.tell(trial, state=TrialState.FAIL)
        progress.note(f"{name} FAILED: no finite {OBJECTIVE}", show)
        raise optuna.TrialPruned(f"trial {asked.number} reached no finite {OBJECTIVE}")
    else:
        study.tell(trial, reporter.best)
        result["state"] = "COMPLETE"
    if show:
        try:
            best = study.best_trial
        except ValueError:  # no trial has completed yet
            best = None
        progress.note(trial_line(result, best), show)
    return result


def trial_line(result: dict[str, Any], best=None) -> str:
    """Return a finished trial's line: its number, state and objective (and the study's best so far)."""
    line = f"trial {result['number']:>3}  {result['state']:<8}  {OBJECTIVE} {result['value']:.4f}"
    return line if best is None else line + f"  (best so far: trial {best.number}, {best.value:.4f})"


def export_best(ref: StudyRef, settings: Settings, path: Path) -> dict[str, Any]:
    """Write the study's best trial as a settings file for ``sketchpipe run --config``; return the best
    trial's number, objective and parameters.

    The file holds every setting that differs from the defaults (the data source included), so a run
    with it trains the tuned architecture on the data it was tuned on.
    """
    study = open_study(ref)
    best = study.best_trial
    tuned = settings_of(best.params, settings, ref.architecture)
    defaults = Settings()
    values = {}
    for field in dataclasses.fields(Settings):
        value = getattr(tuned, field.name)
        if value != getattr(defaults, field.name):
            values[field.name] = _plain(value)
    header = (
        f"# Tuned by `sketchpipe tune`: study {ref.name!r}, best of {len(study.trials)} trials: trial {best.number},\n"
        f"# best {OBJECTIVE} {best.value:.4f}. Use it with: sketchpipe run --config {path}\n"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(values, sort_keys=False))
    study_run_id = study._study_id  # MLflow's storage: a study's id is its run's id
    client = tracking.client_for(ref.tracking_uri)
    finished = [t for t in study.trials if t.state.is_finished()]
    tracking.log_metrics(
        client, study_run_id, {f"best_{OBJECTIVE}": best.value, "best_trial": best.number, "trials": len(finished)}
    )
    client.set_tag(study_run_id, "best_trial_run_id", best._trial_id)
    client.log_artifact(study_run_id, str(path))
    tracking.end_run(client, study_run_id, "FINISHED")
    return {
        "number": best.number,
        "value": best.value,
        "params": best.params,
        "path": str(path),
        "study_run_id": study_run_id,
        "run_id": best._trial_id,
    }


def _plain(value):
    """Return ``value`` as plain YAML data (tuples as lists, mappings as dicts)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value
