"""sketchpipe's library: data formats, validation, features, models, training, evaluation, registry.

Plain functions and small classes; no Prefect here (``tasks/`` and ``flows/`` wire these to Prefect).
"""
