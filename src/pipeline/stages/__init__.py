"""The pipeline's stages as plain functions of settings, paths and ids: what the Prefect tasks call.

One module per group of tasks (``tasks/data.py`` wraps :mod:`.data`, ``tasks/training.py``
:mod:`.training`, ``tasks/registry.py`` :mod:`.registry`), and each stage has the name of its task.
Stages read their inputs from disk or the tracking store and return a path, an id or a small
dataclass, so that they can be cached, retried and run on other workers.
"""
