"""`gcp-storage-emulator`, with the one response header of real GCS that tensorstore needs and it omits.

Real GCS answers every media download with ``x-goog-generation`` (and ``x-goog-metageneration``); the
emulator does not (as of 2026.7.19). tensorstore's GCS driver reads an object's generation from that
header, and every conditional rewrite of an existing object (an OCDBT manifest update, e.g. Orbax saving a
step again over what a killed save left behind) then fails with "Malformed StorageGeneration". So the
stand-in is made to answer as the service does; nothing else is changed.

Run as ``python -m helpers.gcs_emulator_main start ...`` with the emulator's own arguments.
"""

from __future__ import annotations

from http import HTTPStatus

from gcp_storage_emulator.handlers import objects

_download = objects.download


def download(request, response, storage, *args, **kwargs):
    _download(request, response, storage, *args, **kwargs)
    if response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj["metageneration"])


# Before the server module builds its routing table from these handlers.
objects.download = download

if __name__ == "__main__":
    from gcp_storage_emulator.__main__ import main

    main()
