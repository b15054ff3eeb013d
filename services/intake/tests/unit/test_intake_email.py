"""Unit tests of e-mail parsing: plain, multipart, quoted-printable, base64, attachments."""

from __future__ import annotations

import base64
import quopri
from email.message import EmailMessage

import pytest

from loket_intake.email_intake import (
    MAX_TEXT,
    EmailParseError,
    compose_text,
    html_to_text,
    parse_email,
)


def raw(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


def test_plain_message() -> None:
    mail = parse_email(
        raw(
            "From: Jan de Vries <jan@example.nl>\n"
            "To: vragen@loket.example\n"
            "Subject: Vraag over toeslag\n"
            "Message-ID: <abc@example.nl>\n"
            "X-Loket-Initiative: bibliotheek-rotterdam-centrale\n"
            "\n"
            "Ik moet toeslag terugbetalen.\nKan dat in delen?\n"
        )
    )
    assert mail.subject == "Vraag over toeslag"
    assert mail.body == "Ik moet toeslag terugbetalen.\nKan dat in delen?"
    assert mail.text == "Vraag over toeslag\n\nIk moet toeslag terugbetalen.\nKan dat in delen?"
    assert (mail.sender_name, mail.sender_email) == ("Jan de Vries", "jan@example.nl")
    assert mail.message_id == "<abc@example.nl>"
    assert mail.initiative == "bibliotheek-rotterdam-centrale"
    assert mail.attachments == []


def test_quoted_printable_latin1() -> None:
    body = quopri.encodestring("Mijn café heeft een schuld van €0 bij de gemeente.".encode())
    mail = parse_email(
        b"From: a@example.nl\r\nSubject: =?utf-8?q?Caf=C3=A9?=\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + body
    )
    assert mail.subject == "Café"
    assert mail.body == "Mijn café heeft een schuld van €0 bij de gemeente."


def test_base64_iso_8859_1() -> None:
    body = base64.encodebytes("Geachte heer, ik woon in België.".encode("iso-8859-1"))
    mail = parse_email(
        b"From: a@example.nl\r\nSubject: Verhuizing\r\n"
        b"Content-Type: text/plain; charset=iso-8859-1\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + body
    )
    assert mail.body == "Geachte heer, ik woon in België."


def test_multipart_alternative_prefers_plain() -> None:
    msg = EmailMessage()
    msg["From"] = "Piet <piet@example.nl>"
    msg["Subject"] = "Studieschuld"
    msg.set_content("Platte tekst: ik heb een studieschuld.")
    msg.add_alternative("<p>HTML: ik heb een <b>studieschuld</b>.</p>", subtype="html")
    mail = parse_email(msg.as_bytes())
    assert mail.body == "Platte tekst: ik heb een studieschuld."
    assert mail.attachments == []


def test_html_only_is_stripped() -> None:
    msg = EmailMessage()
    msg["From"] = "piet@example.nl"
    msg["Subject"] = "Vraag"
    msg.set_content(
        "<html><head><style>p{color:red}</style><title>x</title></head><body>"
        "<p>Eerste&nbsp;regel &amp; meer</p><script>alert(1)</script><div>Tweede regel</div>"
        "</body></html>",
        subtype="html",
    )
    mail = parse_email(msg.as_bytes())
    assert mail.body == "Eerste regel & meer\n\nTweede regel"
    assert "alert" not in mail.text and "color" not in mail.text


def test_attachments_are_listed_not_kept() -> None:
    msg = EmailMessage()
    msg["From"] = "Anna <anna@example.nl>"
    msg["Subject"] = "Brief van CJIB"
    msg.set_content("Zie de bijlage.")
    msg.add_attachment(
        b"%PDF-1.4 " + b"x" * 1000, maintype="application", subtype="pdf", filename="brief.pdf"
    )
    msg.add_attachment(b"\x89PNG" + b"y" * 10, maintype="image", subtype="png", filename="foto.png")
    mail = parse_email(msg.as_bytes())
    assert mail.body == "Zie de bijlage."
    assert [(a.filename, a.content_type, a.size_bytes) for a in mail.attachments] == [
        ("brief.pdf", "application/pdf", 1009),
        ("foto.png", "image/png", 14),
    ]


def test_subject_only_and_long_text_truncated() -> None:
    mail = parse_email(raw("From: a@example.nl\nSubject: Alleen onderwerp\n\n"))
    assert mail.text == "Alleen onderwerp"
    text, truncated = compose_text("S", "x" * 10_000)
    assert truncated and len(text) == MAX_TEXT and text.endswith("[...]")


def test_no_sender_is_fine() -> None:
    mail = parse_email(raw("Subject: Hoi\n\nTekst"))
    assert (mail.sender_name, mail.sender_email) == (None, None)


@pytest.mark.parametrize("body", [b"", b"   \r\n", b"just some bytes without headers"])
def test_unusable_messages(body: bytes) -> None:
    with pytest.raises(EmailParseError):
        parse_email(body)


def test_html_to_text_keeps_blocks_apart() -> None:
    assert html_to_text("<ul><li>een</li><li>twee</li></ul>").split() == ["een", "twee"]
