"""Monitoring: a scored batch compared with its model's reference profile (:mod:`.drift`, with Evidently)."""
