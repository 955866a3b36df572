"""What the test modules share: plain functions, types and constants (pytest fixtures are in
``tests/conftest.py``). One module a job:

* ``s3``: the tests' S3 endpoint, fresh buckets, counting requests and canned S3 error replies;
* ``faults``: random S3 faults injected into a boto3 client;
* ``apps``: the ``make_app`` fixture's type and the backend of an app;
* ``keys``: keyrings with a second KEK, and the forms key material could leak in;
* ``kms``: a local stand-in for KMS, and clients of moto's KMS server;
* ``cli``: the ``envelope`` command group run in-process;
* ``results``: the small Celery results the rotation tests seal;
* ``worker``: a real ``celery worker`` subprocess, its configuration and its log;
* ``e2e_app``, ``broker``: that worker's Celery app and its broker transport;
* ``events``: a task-event receiver on a worker's broker;
* ``distributed``: bucket contents and PUT counts for ``rotate --distributed``;
* ``cli_app``: the app of ``celery -A support.cli_app envelope ...``;
* ``paths``: where the tests are, for subprocesses that import these modules.
* ``celery_features``: what the installed Celery offers, and skips for what it lacks.

Subprocesses import ``support.e2e_app``, ``support.broker`` and ``support.cli_app`` by name:
``paths.subprocess_pythonpath`` puts the tests folder on their ``PYTHONPATH``.
"""
