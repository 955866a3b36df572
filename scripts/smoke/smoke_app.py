"""The smoke test's Celery app: README's "Install" configuration, word for word, plus where the
local S3 server is (``s3_endpoint_url`` and its credentials, from the environment).

``scripts/smoke.py`` copies this file into an empty folder and runs ``celery -A smoke_app ...``
there with the installed wheel: nothing of the source tree is importable.
"""

import os

from celery import Celery

app = Celery("smoke_app")
app.conf.update(
    result_backend="s3envelope://",
    s3_bucket=os.environ["SMOKE_BUCKET"],
    s3_base_path="celery/",
    s3_region="us-east-1",
    envelope_keyring=os.environ["SMOKE_KEYRING"],
    # The local S3 server in place of AWS, with its credentials:
    s3_endpoint_url=os.environ["SMOKE_ENDPOINT_URL"],
    s3_access_key_id=os.environ["SMOKE_ACCESS_KEY_ID"],
    s3_secret_access_key=os.environ["SMOKE_SECRET_ACCESS_KEY"],
)
