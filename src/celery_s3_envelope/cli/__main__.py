"""``python -m celery_s3_envelope.cli``: the console script without its launcher (the demo's)."""

from . import main

main()
