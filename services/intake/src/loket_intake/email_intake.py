"""Turning a raw RFC 5322 e-mail into a question (pure, no I/O).

- text: the first ``text/plain`` part; else the first ``text/html`` part, stripped to text;
  the subject is prepended (``"<subject>\\n\\n<body>"``); capped at 5000 characters;
- quoted-printable and base64 transfer encodings and the declared charsets are decoded;
- attachments are listed (filename, content type, size in bytes) and never stored;
- the sender (``From``) becomes the requester's contact details; no consent is implied.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import getaddresses
from html.parser import HTMLParser

from loket_schemas.events import Attachment

MAX_TEXT = 5000
TRUNCATION_MARK = "\n[...]"
INITIATIVE_HEADER = "X-Loket-Initiative"


class EmailParseError(ValueError):
    """The body is not a usable e-mail message."""


@dataclass(frozen=True)
class ParsedEmail:
    subject: str
    body: str
    sender_name: str | None
    sender_email: str | None
    message_id: str | None
    initiative: str | None
    attachments: list[Attachment] = field(default_factory=list)
    truncated: bool = False

    @property
    def text(self) -> str:
        """The question text: subject, blank line, body (capped at 5000 characters)."""
        return compose_text(self.subject, self.body)[0]


class _TextExtractor(HTMLParser):
    """Visible text of an HTML document, with line breaks for block elements."""

    _BLOCK = frozenset(
        {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre"}
    )
    _SKIP = frozenset({"script", "style", "head", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skip += 1
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    return normalise_whitespace("".join(parser.parts))


def normalise_whitespace(text: str) -> str:
    lines = [re.sub(r"[ \t\f\v\u00a0]+", " ", line).strip() for line in text.splitlines()]
    joined = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", joined).strip()


def compose_text(subject: str, body: str) -> tuple[str, bool]:
    """Subject + body, capped at :data:`MAX_TEXT`; returns (text, truncated)."""
    subject, body = subject.strip(), body.strip()
    text = f"{subject}\n\n{body}" if subject and body else (subject or body)
    if len(text) > MAX_TEXT:
        return text[: MAX_TEXT - len(TRUNCATION_MARK)].rstrip() + TRUNCATION_MARK, True
    return text, False


def _part_text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:  # unknown charset name
        return payload.decode("utf-8", errors="replace")


def _is_attachment(part: Message) -> bool:
    if part.is_multipart():
        return False
    disposition = (part.get("Content-Disposition") or "").split(";")[0].strip().lower()
    if disposition == "attachment":
        return True
    if part.get_filename():
        return True
    return part.get_content_maintype() not in {"text"}


def _sender(msg: Message) -> tuple[str | None, str | None]:
    raw = msg.get("From")
    if not raw:
        return None, None
    header = msg["From"]
    addresses = getattr(header, "addresses", None)
    if addresses:
        addr: Address = addresses[0]
        return (addr.display_name or None), (addr.addr_spec or None)
    pairs = getaddresses([str(raw)])
    if pairs and pairs[0][1]:
        return (pairs[0][0] or None), pairs[0][1]
    return None, None


def parse_email(raw: bytes) -> ParsedEmail:
    """Parse one RFC 5322 message. Raises :class:`EmailParseError` when it holds no text."""
    if not raw.strip():
        raise EmailParseError("empty message")
    try:
        msg = BytesParser(policy=policy.default).parsebytes(raw)
    except Exception as exc:  # the stdlib parser is lenient; this is a safety net
        raise EmailParseError(f"cannot parse message: {type(exc).__name__}") from exc
    if not isinstance(msg, EmailMessage) or not (msg.keys() or msg.get_payload()):
        raise EmailParseError("not an e-mail message")
    if not msg.keys():
        raise EmailParseError("message has no headers")

    plain: str | None = None
    html: str | None = None
    attachments: list[Attachment] = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        if _is_attachment(part):
            payload = part.get_payload(decode=True)
            size = len(payload) if isinstance(payload, bytes) else 0
            attachments.append(
                Attachment(
                    filename=(part.get_filename() or "naamloos")[:255],
                    content_type=part.get_content_type()[:255],
                    size_bytes=size,
                )
            )
            continue
        ctype = part.get_content_type()
        if ctype == "text/plain" and plain is None:
            plain = _part_text(part)
        elif ctype == "text/html" and html is None:
            html = _part_text(part)

    if plain is not None and plain.strip():
        body = normalise_whitespace(plain)
    elif html is not None:
        body = html_to_text(html)
    else:
        body = ""
    subject = normalise_whitespace(str(msg.get("Subject") or "")).replace("\n", " ")
    name, address = _sender(msg)
    _, truncated = compose_text(subject, body)
    initiative = msg.get(INITIATIVE_HEADER)
    message_id = msg.get("Message-ID")
    return ParsedEmail(
        subject=subject,
        body=body,
        sender_name=name[:200] if name else None,
        sender_email=address if address and len(address) <= 254 else None,
        message_id=str(message_id).strip() or None if message_id else None,
        initiative=str(initiative).strip() or None if initiative else None,
        attachments=attachments,
        truncated=truncated,
    )
