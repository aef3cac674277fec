"""Prefect flows that chain the tasks: the training pipeline and hand promotion."""
