"""Turning a POST body into named RGB images, so every way it can be wrong is a RequestError.

Two shapes are accepted: the image bytes as the whole body (any Content-Type but multipart),
or multipart/form-data with one or more `image` file fields. Multipart is parsed with the
standard `email` package (the `cgi` module is gone in Python 3.13).
"""

from __future__ import annotations

import email.parser
import email.policy
import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from anomap.data.images import to_rgb
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


def decode_image(data: bytes, filename: str) -> Image.Image:
    """8-bit RGB, converted as `anomap.data.images.read_image` converts files, so a served
    image scores exactly as the same file given to `anomap predict`."""
    if not data:
        raise RequestError(f"cannot read image {filename}: it is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return to_rgb(image, Path(filename))
    except AnomapError as exc:
        raise RequestError(str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise RequestError(
            f"cannot read image {filename}: not a recognised image format, or its header is corrupt"
        ) from exc
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        raise RequestError(
            f"cannot read image {filename}: the file is corrupt or truncated ({exc})"
        ) from exc


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
    return [Upload(name, decode_image(data, name)) for name, data in files]
