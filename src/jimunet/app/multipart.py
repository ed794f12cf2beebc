"""The one file part of a ``multipart/form-data`` body (what ``curl -F f=@d.png`` sends),
read with bounds: at most ``MAX_PARTS`` parts, ``MAX_PART_HEADER`` bytes of headers each, no
nested multipart parts. Errors are ``ApiError(400, ...)`` for the page's JSON answer."""
from __future__ import annotations


MAX_PARTS = 16                    # parts read from a multipart/form-data body (curl -F sends one)
MAX_PART_HEADER = 8192            # bytes of one part's headers


class ApiError(Exception):
    """An answer other than 200: ``status`` and a message for ``{"error": ...}``."""

    def __init__(self, status: int, message: str, headers=()):
        super().__init__(message)
        self.status, self.headers = int(status), list(headers)


def _boundary(content_type: str) -> bytes:
    """The ``boundary`` parameter of a multipart Content-Type (RFC 2046: 1 to 70 characters)."""
    for param in content_type.split(";")[1:]:
        key, sep, value = param.partition("=")
        if sep and key.strip().lower() == "boundary":
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            if 1 <= len(value) <= 70 and value.isascii() and value.isprintable() and not value.endswith(" "):
                return value.encode("ascii")
            break
    raise ApiError(400, "malformed multipart/form-data: the Content-Type needs a boundary=... of 1 to 70 "
                        "characters")


def _part_content(body: bytes, start: int, end: int) -> bytes:
    """The content of the part ``body[start:end]`` (headers, a blank line, the content)."""
    if start == end:
        return b""
    if body.startswith(b"\r\n", start):  # no headers
        return body[start + 2:end]
    stop = body.find(b"\r\n\r\n", start, min(end, start + MAX_PART_HEADER))
    if stop < 0:
        raise ApiError(400, f"malformed multipart/form-data body: a part's headers do not end with a blank line "
                            f"within {MAX_PART_HEADER:,} bytes")
    for line in body[start:stop].split(b"\r\n"):
        name, _, value = line.decode("latin-1").partition(":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == "content-type" and value.startswith("multipart/"):
            raise ApiError(400, "a multipart/form-data part that is itself multipart is not accepted: send the "
                                "picture as one file part")
        if name == "content-transfer-encoding" and value not in ("binary", "8bit", "7bit"):
            raise ApiError(400, f"Content-Transfer-Encoding {value[:40]!r} is not accepted: send the file's bytes "
                                f"as they are")
    return body[stop + 4:end]


def first_file_part(body: bytes, content_type: str) -> bytes:
    """The content of the first non-empty part of a ``multipart/form-data`` body (``curl -F
    f=@d.png`` sends one part), reading at most ``MAX_PARTS`` parts and no nested ones."""
    delim = b"--" + _boundary(content_type)
    sep = b"\r\n" + delim
    if body.startswith(delim):
        pos = len(delim)
    else:  # a preamble before the first boundary is ignored (RFC 2046)
        pos = body.find(sep)
        if pos < 0:
            raise ApiError(400, "malformed multipart/form-data body: the boundary of its Content-Type is not in it")
        pos += len(sep)
    for _ in range(MAX_PARTS):
        if body.startswith(b"--", pos):  # the closing boundary
            raise ApiError(400, "the multipart/form-data body holds no file")
        eol = body.find(b"\r\n", pos, pos + 1024)  # the rest of the boundary line (RFC 2046: blanks only)
        if eol < 0:
            raise ApiError(400, "malformed multipart/form-data body: a boundary line does not end")
        end = body.find(sep, eol + 2)
        if end < 0:
            raise ApiError(400, "malformed multipart/form-data body: a part has no closing boundary")
        data = _part_content(body, eol + 2, end)
        if data:
            return data
        pos = end + len(sep)
    raise ApiError(400, f"the multipart/form-data body has more than {MAX_PARTS} parts and none of the first "
                        f"{MAX_PARTS} holds a file; send one file")


__all__ = ["ApiError", "first_file_part", "MAX_PARTS", "MAX_PART_HEADER"]
