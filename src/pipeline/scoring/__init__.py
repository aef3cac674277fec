"""Batch scoring: sketch files of any supported format in, one Parquet table of predictions and sketch
descriptors out (:mod:`.readers`, :mod:`.descriptors`, :mod:`.engine`), and the reference profile each
registered version keeps for monitoring (:mod:`.profile`)."""
