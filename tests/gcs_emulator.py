"""Test-only launcher of ``gcp-storage-emulator`` with GCS generation semantics fixed.

Run as ``python tests/gcs_emulator.py start --host=127.0.0.1 --port=P --in-memory`` (same
arguments as the ``gcp-storage-emulator`` CLI). Why it exists: Orbax writes checkpoints through
tensorstore's ``gcs`` kvstore (OCDBT), which relies on object generations the emulator gets wrong:

1. Media downloads (``alt=media``) carry no ``x-goog-generation`` header, so tensorstore records
   generation 0 for every object it reads. OCDBT then rewrites ``manifest.ocdbt`` conditionally
   (``ifGenerationMatch=<generation read>``) and tensorstore rejects generation 0 client-side with
   ``Malformed StorageGeneration`` -- the error that made ``gs://`` checkpoints fail here.
2. ``ifGenerationMatch`` / ``ifGenerationNotMatch`` are ignored, so a conditional write that
   real GCS refuses (HTTP 412) silently succeeds; OCDBT's optimistic concurrency is untested.
3. ``objects.move`` (``.../o/SRC/moveTo/o/DST``, what gcsfs' ``mv`` calls first) answers 501,
   which gcsfs retries for ~30 s before copying instead; here it is a copy + delete.
4. The server is single-threaded with a listen backlog of 5; tensorstore opens many
   connections at once and the surplus ones wait on TCP retransmits.

The client side (gcsfs, Orbax, tensorstore) is untouched: the production code path, pointed at
this endpoint. Handlers stay the emulator's own; they are wrapped, not rewritten.
"""

from __future__ import annotations

import http.server
import sys
import threading
from http import HTTPStatus

from gcp_storage_emulator import server as emu_server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_LOCK = threading.Lock()  # the emulator's storage is not thread-safe: one request at a time


def _generation(storage, bucket: str, name: str) -> int:
    """Current generation of an object, 0 when it does not exist (GCS's convention)."""
    try:
        return int(storage.get_file_obj(bucket, name)["generation"])
    except (NotFound, KeyError, TypeError, ValueError):
        return 0


def _object_name(request) -> str | None:
    params = request.params or {}
    if params.get("object_id"):
        return params["object_id"]
    names = request.query.get("name")
    return names[0] if names else None


def _precondition_failed(request, storage, reading: bool) -> HTTPStatus | None:
    """412 when ``ifGenerationMatch`` fails; 304 when a read's ``ifGenerationNotMatch`` fails."""
    q = request.query
    if "ifGenerationMatch" not in q and "ifGenerationNotMatch" not in q:
        return None
    name = _object_name(request)
    if name is None:
        return None
    current = _generation(storage, request.params["bucket_name"], name)
    if reading and current == 0 and "ifGenerationMatch" not in q:
        return None  # a missing object reads as 404 whatever ifGenerationNotMatch says
    if "ifGenerationMatch" in q and int(q["ifGenerationMatch"][0]) != current:
        return HTTPStatus.PRECONDITION_FAILED
    if "ifGenerationNotMatch" in q and int(q["ifGenerationNotMatch"][0]) == current:
        return HTTPStatus.NOT_MODIFIED if reading else HTTPStatus.PRECONDITION_FAILED
    return None


def _guarded(handler, reading: bool, headers: bool):
    def wrapped(request, response, storage, *args, **kwargs):
        is_media = headers or (request.query.get("alt") or [""])[0] == "media"
        status = _precondition_failed(request, storage, reading)
        if status is not None:
            response.status = status
            return None
        out = handler(request, response, storage, *args, **kwargs)
        name = _object_name(request)
        if is_media and name and response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
            gen = _generation(storage, request.params["bucket_name"], name)
            if gen:  # what real GCS sends with every media download
                response["x-goog-generation"] = str(gen)
                response["x-goog-metageneration"] = "1"
        return out

    wrapped.__wrapped__ = handler
    return wrapped


def move(request, response, storage, *args, **kwargs):
    """objects.move within one bucket: copy, then delete the source."""
    bucket, src, dst = (request.params[k] for k in ("bucket_name", "object_id", "dest_object_id"))
    try:
        obj = objects._copy(request.base_url, storage, bucket, src, bucket, dst)
        storage.delete_file(bucket, src)
        response.json(obj)
    except NotFound:
        response.status = HTTPStatus.NOT_FOUND


_MOVE = (
    rf"^{emu_server.settings.API_ENDPOINT}/b/(?P<bucket_name>[-.\w]+)/o/"
    r"(?P<object_id>.*[^/]+)/moveTo/o/(?P<dest_object_id>.*[^/]+)$",
    {"POST": move},
)


def patch() -> None:
    """Wrap the object handlers in the emulator's routing table (idempotent)."""
    kinds = {
        objects.download: (True, True),
        objects.get: (True, False),
        objects.insert: (False, False),
        objects.delete: (False, False),
    }
    for _, routes in emu_server.HANDLERS:
        for method, fn in list(routes.items()):
            if fn in kinds:
                routes[method] = _guarded(fn, *kinds[fn])
    if emu_server.HANDLERS[0] is not _MOVE:  # before the generic object route
        emu_server.HANDLERS = (_MOVE, *emu_server.HANDLERS)
    handle = emu_server.Router.handle
    if not getattr(handle, "_serialised", False):

        def serialised(self, method):
            with _LOCK:
                return handle(self, method)

        serialised._serialised = True
        emu_server.Router.handle = serialised

    class Threaded(http.server.ThreadingHTTPServer):
        request_queue_size = 128
        daemon_threads = True

        def handle_error(self, request, client_address):
            # gcsfs cancels the loser of concurrent requests: a client gone is no server error
            if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
                super().handle_error(request, client_address)

    emu_server.server.HTTPServer = Threaded  # this process only runs the emulator


if __name__ == "__main__":
    from gcp_storage_emulator.__main__ import main

    patch()
    main(sys.argv[1:])
