"""Prefect tasks: thin wrappers over ``pipeline.stages`` that pass settings, paths and ids."""
