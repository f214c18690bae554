"""Data set adapters: each writes the same raw on-disk form (see :mod:`pipeline.data.manifest`)."""
