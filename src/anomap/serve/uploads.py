"""Turning a POST body into named RGB images, so every way it can be wrong is a RequestError.

Two shapes are accepted: the image bytes as the whole body (any Content-Type but multipart),
or multipart/form-data with one or more `image` file fields. Multipart is parsed with the
standard `email` package (the `cgi` module is gone in Python 3.13).
"""

from __future__ import annotations

import email.parser
import email.policy
from dataclasses import dataclass

from PIL import Image

from anomap.data.images import decode_image
from anomap.errors import AnomapError

FIELD = "image"


class RequestError(AnomapError):
    """A request the client can fix; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Upload:
    filename: str
    image: Image.Image


def decode_upload(data: bytes, filename: str) -> Image.Image:
    """8-bit RGB, decoded and converted as `anomap predict` reads files, so a served image
    scores exactly as the same file; a bad upload is a RequestError (HTTP 400)."""
    try:
        return decode_image(data, filename)
    except AnomapError as exc:
        raise RequestError(str(exc)) from exc


def _multipart_files(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    """(filename, bytes) of every `image` field of a multipart/form-data body."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise RequestError("multipart/form-data body without a boundary or parts")
    files = []
    for number, part in enumerate(message.iter_parts(), start=1):
        if part.get_param("name", header="content-disposition") == FIELD:
            name = part.get_filename() or f"{FIELD}-{number}"
            files.append((name, part.get_payload(decode=True) or b""))
    if not files:
        raise RequestError(f"multipart/form-data body has no {FIELD!r} file field")
    return files


def read_uploads(content_type: str, body: bytes, filename: str) -> list[Upload]:
    """The images of a request body; `filename` names a raw-body image."""
    if not body:
        raise RequestError(
            "empty request body: send an image as the body, or multipart/form-data "
            f"with {FIELD!r} file fields"
        )
    if content_type.lower().startswith("multipart/form-data"):
        files = _multipart_files(content_type, body)
    else:
        files = [(filename, body)]
    return [Upload(name, decode_upload(data, name)) for name, data in files]
