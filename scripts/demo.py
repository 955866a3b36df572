"""Interim demo: seal and open one Celery-shaped result with a generated keyring."""

from __future__ import annotations

import json

import celery_s3_envelope as cse

keyring = cse.Keyring.generate("demo-k1")
key = "celery-task-meta-00000000-0000-4000-8000-000000000000"
result = json.dumps({"status": "SUCCESS", "result": {"ssn": "123-45-6789"}})
envelope = cse.seal(result, key=key, keyring=keyring)
header = cse.inspect(envelope)
print(f"sealed {len(result)} bytes into {len(envelope)}: kek={header.kek_id} key={header.key}")
print("plaintext visible in the envelope:", b"123-45-6789" in envelope)
print("opened:", cse.unseal(envelope, keyring=keyring, key=key))
