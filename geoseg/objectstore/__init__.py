"""Outputs on S3-protocol object storage: ``s3://`` URLs, one boto3 client per environment, the
checks made before any work, and uploads that make an object visible only once it is complete.

Credentials and the endpoint come from the standard AWS environment (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``...), or from GDAL's own ``AWS_S3_ENDPOINT`` /
``AWS_HTTPS``; :func:`gdal_s3_env` points GDAL's ``/vsis3/`` at the same endpoint. Every failure
of the store (unreachable, missing bucket, refused credentials, an error mid-upload) becomes one
:class:`~geoseg.errors.OutputError` line naming the URL and how to fix it. boto3 is imported
only when a client is first needed, so that the CLI starts without it.

``urls.py`` (``s3://`` URLs), ``client.py`` (endpoint, client, GDAL's settings), ``failures.py``
(a failure as one line), ``checks.py`` (before any work), ``uploads.py`` (writes) and ``reads.py``
(reads, lists, deletes); each caller imports what it uses from the module that holds it.
"""
