import pytest
from django.utils.http import content_disposition_header

from agentpost.mail.filenames import (
    MAX_FILENAME_BYTES,
    dedupe_filenames,
    safe_filename,
)


@pytest.mark.parametrize(
    ("hostile", "safe"),
    [
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\system32\\evil.dll", "evil.dll"),
        ("C:\\Users\\x\\report.pdf", "report.pdf"),
        ("/etc/shadow", "shadow"),
        ("..／..／etc／passwd", "passwd"),  # fullwidth solidus, folded by NFKC
        ("..", "attachment"),
        (".", "attachment"),
        ("", "attachment"),
        (None, "attachment"),
        ("   ", "attachment"),
        ("a\x00b.txt", "a b.txt"),
        ("\x00\x00", "attachment"),
        ("line\r\nContent-Type: text/html", "html"),  # "/" still splits
        ("tab\there.txt", "tab here.txt"),
        ("bell\x07\x7f\x9b.txt", "bell .txt"),
        # U+202E RIGHT-TO-LEFT OVERRIDE would show "invoice‮gpj.exe" as
        # "invoiceexe.jpg": the override goes and the real extension shows.
        ("invoice\u202egpj.exe", "invoice gpj.exe"),
        ("photo\u2066.exe\u2069.png", "photo .exe .png"),
        ("zero\u200bwidth.txt", "zero width.txt"),
        ("\ufeffbom.txt", "bom.txt"),
        ("CON", "_CON"),
        ("con.txt", "_con.txt"),
        ("CON .txt", "_CON .txt"),
        ("nul.tar.gz", "_nul.tar.gz"),
        ("Aux", "_Aux"),
        ("PRN.", "_PRN"),
        ("COM1.log", "_COM1.log"),
        ("lpt9", "_lpt9"),
        ("COM\u00b9", "_COM1"),  # superscript one
        ("CONIN$", "_CONIN$"),
        ("conout$.txt", "_conout$.txt"),
        ("console.txt", "console.txt"),
        ("nullable.txt", "nullable.txt"),
        ("C:evil.txt", "C_evil.txt"),
        ('a<b>c|d*e"f?.txt', "a_b_c_d_e_f_.txt"),
        ("trailing dots...", "trailing dots"),
        ("  spaced   out  .pdf", "spaced out .pdf"),
        ("Rechnung März €.pdf", "Rechnung März €.pdf"),
        ("日本語の利用状況レポート.csv", "日本語の利用状況レポート.csv"),
        ("e\u0301cran.png", "écran.png"),  # decomposed é composed
        ("\ud800.txt", "txt"),  # a lone surrogate cannot even be encoded
    ],
)
def test_it_makes_hostile_names_safe(hostile, safe):
    assert safe_filename(hostile) == safe


@pytest.mark.parametrize(
    "name",
    [
        "../" * 100 + "x",
        "a" * 1000 + ".pdf",
        "é" * 500 + ".pdf",
        "日" * 300 + ".csv",
        "😀" * 300,
        "x." + "y" * 500,
    ],
)
def test_a_very_long_name_fits_and_stays_valid_utf8(name):
    safe = safe_filename(name)
    assert 0 < len(safe.encode("utf-8")) <= MAX_FILENAME_BYTES
    safe.encode("utf-8")  # no split character, no surrogate


def test_a_long_name_keeps_its_extension():
    safe = safe_filename("é" * 500 + ".pdf")
    assert safe.endswith("é.pdf")
    assert len(safe.encode()) <= MAX_FILENAME_BYTES


def test_a_nameless_part_is_named_after_its_type():
    assert safe_filename(None, content_type="image/gif") == "attachment.gif"
    assert safe_filename("", content_type="application/pdf") == "attachment.pdf"
    assert safe_filename(None, content_type="x-unknown/type") == "attachment"


@pytest.mark.parametrize(
    "name",
    ["../x", "CON", "a\x00b", "\u202etxt.exe", "x" * 400, "a:b", "..", "é\r\n"],
)
def test_the_result_is_always_safe(name):
    safe = safe_filename(name)
    assert "/" not in safe and "\\" not in safe
    assert safe not in ("", ".", "..")
    assert not any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in safe)
    assert not any(c in safe for c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2069")
    assert not any(c in safe for c in '<>:"|?*')
    assert safe.split(".")[0].rstrip().upper() not in {"CON", "PRN", "AUX", "NUL"}


def test_duplicates_get_numbered_without_regard_to_case():
    assert dedupe_filenames(["a.txt", "a.txt", "A.TXT", "b", "b"]) == [
        "a.txt",
        "a (2).txt",
        "A (3).TXT",
        "b",
        "b (2)",
    ]


def test_a_name_that_looks_numbered_already_does_not_collide():
    assert dedupe_filenames(["a (2).txt", "a.txt", "a.txt"]) == [
        "a (2).txt",
        "a.txt",
        "a (3).txt",
    ]


def test_numbered_duplicates_of_a_long_name_still_fit():
    long = safe_filename("x" * 400 + ".pdf")
    names = dedupe_filenames([long] * 12)
    assert len(set(names)) == 12
    assert all(len(n.encode()) <= MAX_FILENAME_BYTES for n in names)
    assert names[11].endswith(" (12).pdf")


@pytest.mark.parametrize(
    ("name", "header"),
    [
        ("report.pdf", 'attachment; filename="report.pdf"'),
        (
            "Rechnung März €.pdf",
            "attachment; filename*=utf-8''Rechnung%20M%C3%A4rz%20%E2%82%AC.pdf",
        ),
        ("x\r\nSet-Cookie: a=b", 'attachment; filename="x Set-Cookie_ a=b"'),
        ('q"uote.txt', 'attachment; filename="q_uote.txt"'),
    ],
)
def test_the_disposition_header_of_a_safe_name_has_no_surprises(name, header):
    assert content_disposition_header(True, safe_filename(name)) == header
