"""Scheduled batch jobs: segment many scenes once each, resumably, from a YAML job file.

A scene counts as done when its sidecar record exists and matches (scene path, size and
modification time, the model's content hash, the options, the geoseg version). The record is
written last and atomically, after every output has been renamed into place, so a job killed at
any moment and started again redoes exactly the unfinished scenes. A lock file keeps two runs
of one job apart. One failing scene does not stop the others.

``job.py`` is the job and its output paths, ``load.py`` reads and validates a job file,
``records.py`` decides what is done, ``stac.py`` describes a scene's outputs, ``store.py``
mirrors an ``s3://`` output folder, and ``scenes.py`` runs the scenes, several at once.
"""
