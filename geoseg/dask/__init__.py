"""``geoseg.dask``: Dask plumbing shared by predict, chip, vectorize and batch, and ``geoseg worker``.

* :func:`geoseg.dask.session.dask_session`: the one way to get a client: the caller's own, a connection to a
  scheduler, or a new local cluster, closed again only when this helper started it.
* :func:`geoseg.dask.stream.stream`: the one bounded submission loop: at most ``limit`` tasks in flight, results
  yielded as they complete, a lost scheduler reported as :class:`SchedulerError` and pending
  work cancelled; :class:`TaskSlots` shares one such limit among streams run at once (a batch's
  scenes).
* :class:`geoseg.dask.plugin.ModelPlugin`: a worker plugin carrying a model file's bytes, named by their hash, so
  workers need no shared file system for the model (the worker side is :mod:`geoseg.prediction.worker_models`).
* :mod:`geoseg.dask.processes`: ``geoseg worker``, one Dask worker per GPU.
"""
