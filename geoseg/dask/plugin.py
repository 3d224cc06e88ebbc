"""The model file on every worker: a plugin that puts it into each worker's model cache once."""

from __future__ import annotations

import hashlib
import os
import threading
import weakref
from pathlib import Path
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from geoseg.errors import CheckpointError


class ModelPlugin(WorkerPlugin):
    """Worker plugin carrying one model file's bytes to every worker (once per content hash),
    including workers that join or restart later; it drops the file into the worker's model
    cache (:func:`geoseg.model_cache.model_cache_dir`)."""

    def __init__(self, sha256: str, blob: bytes) -> None:
        self.sha256 = sha256
        self.blob = blob
        self.name = f"geoseg-model-{sha256[:16]}"

    def setup(self, worker: Any = None) -> None:
        if hashlib.sha256(self.blob).hexdigest() != self.sha256:
            raise CheckpointError(
                "the model bytes sent to this worker are damaged (content hash mismatch)"
            )
        from geoseg.model_cache import cache_added, cache_hit, model_cache_dir

        cache = model_cache_dir()
        local = cache / f"{self.sha256}.pt"
        if not cache_hit(local):
            from geoseg.fs import write_bytes_atomic

            write_bytes_atomic(local, self.blob)
            cache_added(local)

    def teardown(self, worker: Any = None) -> None:
        """Nothing to undo: the cached file may serve later runs of the same model."""


#: Model hashes already registered as plugins, per client (a batch's scenes share one model).
_SENT: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


_SENT_LOCK = threading.Lock()


def send_model(client: Any, path: str | os.PathLike[str], sha256: str) -> None:
    """Make the model available on every worker of ``client``'s cluster, now and later (once
    per client and model: the scheduler hands the plugin to workers that join later)."""
    with _SENT_LOCK:
        sent = _SENT.setdefault(client, set())
        if sha256 in sent:
            return
        blob = Path(path).read_bytes()
        if hashlib.sha256(blob).hexdigest() != sha256:
            raise CheckpointError(
                f"model file {path} changed while this run was starting; run again"
            )
        plugin = ModelPlugin(sha256, blob)
        client.register_plugin(plugin, name=plugin.name)
        sent.add(sha256)
