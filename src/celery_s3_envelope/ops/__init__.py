"""Bulk operations over a bucket, without click: what the command line and the shard task run.

``context`` resolves what an operation needs (the Celery app, the keyring, one store per bucket);
``sweep`` drives a per-object step over a listing; ``rotate``, ``migrate`` and ``scan`` are those
steps; ``rewrite`` is the conditional write they share; ``shards`` and ``runs`` fan a sweep out
as Celery tasks (``celery_s3_envelope.distributed`` is the task itself).
"""
