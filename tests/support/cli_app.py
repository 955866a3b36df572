"""The Celery app of ``celery -A support.cli_app envelope ...`` in tests/test_cli_s3.py.

Configured from the JSON in ``$CLI_APP_CONFIG`` (bucket, base path, endpoint, credentials,
keyring path), exactly as a project's own app would be: the command takes everything from it.
"""

from __future__ import annotations

import json
import os

from celery import Celery

CONFIG_VARIABLE = "CLI_APP_CONFIG"

app = Celery("cli_app", set_as_current=False)
app.conf.update(json.loads(os.environ.get(CONFIG_VARIABLE, "{}")))
