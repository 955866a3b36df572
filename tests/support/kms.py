"""KMS in tests: a local stand-in for the service (``CountingKms``), and clients of moto's KMS
server (conftest's ``kms_endpoint``)."""

from __future__ import annotations

import os
from typing import Any

import boto3
from botocore.exceptions import ClientError

import celery_s3_envelope as cse
from celery_s3_envelope.kms import KmsKey, KmsProvider


class CountingKms:
    """A local stand-in for KMS: enforces the encryption context like the real service, counts
    calls, and refuses Decrypt on demand (``refusal``)."""

    refusal: str | None = None
    """When set, Decrypt fails with this KMS error code (moto never refuses a disabled key, nor
    throttles)."""

    def __init__(self) -> None:
        self.generated = 0
        self.decrypted = 0
        self._keys: dict[bytes, tuple[bytes, dict[str, str]]] = {}

    def generate_data_key(self, **kw: Any) -> dict[str, bytes]:
        self.generated += 1
        plaintext, blob = os.urandom(kw["NumberOfBytes"]), os.urandom(64)
        self._keys[blob] = (plaintext, kw["EncryptionContext"])
        return {"Plaintext": plaintext, "CiphertextBlob": blob}

    def decrypt(self, **kw: Any) -> dict[str, bytes]:
        self.decrypted += 1
        if self.refusal is not None:
            error = {"Code": self.refusal, "Message": f"{kw['KeyId']}: {self.refusal}."}
            raise ClientError({"Error": error}, "Decrypt")
        plaintext, context = self._keys[kw["CiphertextBlob"]]
        if context != kw["EncryptionContext"]:
            raise ClientError({"Error": {"Code": "InvalidCiphertextException"}}, "Decrypt")
        return {"Plaintext": plaintext}


def fake_keyring(kms: CountingKms, **provider_args: Any) -> tuple[cse.Keyring, KmsProvider]:
    """A keyring whose one KEK, ``kms-1`` (active), is a KMS key of ``kms``; ``provider_args``
    go to its ``KmsProvider`` (scope, cache bounds, clock)."""
    provider = KmsProvider(client_factory=lambda: kms, **provider_args)  # type: ignore[arg-type,return-value]
    keyring = cse.Keyring([KmsKey("kms-1", "arn:aws:kms:test:key/1", cse.KeyState.ACTIVE)])
    return keyring.with_kms(provider), provider


def moto_kms_client(endpoint: str) -> Any:
    """A KMS client of moto's server at ``endpoint`` (moto accepts any credentials)."""
    return boto3.client(
        "kms",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def kms_key_arn(endpoint: str) -> str:
    """A new key in moto's KMS at ``endpoint``, by its ARN."""
    return str(moto_kms_client(endpoint).create_key()["KeyMetadata"]["Arn"])
