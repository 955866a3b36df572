"""Faults between a boto3 client and its S3 server, injected with botocore's ``before-send``.

Each request, with probability ``rate``, meets one of: a 500 InternalError, a 503 SlowDown, a
connection reset before the server saw it, a read timeout after the server applied it (the
response is lost: the nastiest case for conditional writes and counters), or a reset after it
was applied. The fault choice is seeded, so a failing run can be replayed.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from botocore.awsrequest import AWSResponse
from botocore.exceptions import ConnectionClosedError, ReadTimeoutError
from botocore.httpsession import URLLib3Session

from support.s3 import error_response

FAULTS = ("500", "503", "reset-before", "timeout-after", "reset-after")


class FaultInjector:
    def __init__(self, rate: float, seed: int = 1) -> None:
        self.rate = rate
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.injected: Counter[str] = Counter()
        self.requests = 0
        self._http = URLLib3Session()

    def __call__(self, request: Any, **_: Any) -> AWSResponse | None:
        with self.lock:
            self.requests += 1
            if self.random.random() >= self.rate:
                return None
            fault = self.random.choice(FAULTS)
            self.injected[fault] += 1
        if fault == "500":
            return error_response(request, 500, "InternalError", "injected")
        if fault == "503":
            return error_response(request, 503, "SlowDown", "injected")
        if fault == "reset-before":
            raise ConnectionClosedError(endpoint_url=request.url)
        self._http.send(request)  # the server applies it; the client never hears back
        if fault == "timeout-after":
            raise ReadTimeoutError(endpoint_url=request.url)
        raise ConnectionClosedError(endpoint_url=request.url)


@contextmanager
def faults(client: Any, rate: float, seed: int = 1) -> Iterator[FaultInjector]:
    injector = FaultInjector(rate, seed)
    client.meta.events.register_first("before-send.s3", injector)
    try:
        yield injector
    finally:
        client.meta.events.unregister("before-send.s3", injector)
