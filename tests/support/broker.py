"""kombu's filesystem transport with an atomic publish, the broker of ``support.worker``'s workers.

kombu's filesystem transport creates a message file and then writes into it; a consumer that
polls in between moves the still-empty file away, reads ``b""`` and the worker dies with
``JSONDecodeError`` ("Unrecoverable error"). Writing under a name no queue matches, then renaming
it into place (atomic on one filesystem), closes that window. Selected with
``broker_transport = "support.broker:Transport"``.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        """Same file name and content as kombu's, but the file appears complete or not at all."""
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # A name no queue matches in any kombu: 5.7 compares the part after the first dot with
        # "<queue>.msg", kombu 5.3 to 5.6 look for ".<queue>.msg" anywhere in the name.
        partial = os.path.join(self.data_folder_out, f".{uuid.uuid4().hex}.partial")
        with open(partial, "wb") as handle:
            handle.write(str_to_bytes(dumps(payload)))
        os.replace(partial, final)


class Transport(filesystem.Transport):
    Channel = Channel
