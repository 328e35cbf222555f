"""
Attachment names are data, never paths.

``safe_filename`` keeps what a person would recognise of a name and drops what
could hurt: directory parts, NUL and control characters, bidirectional overrides
that disguise an extension, characters Windows refuses, names Windows reserves,
and excess length. Files are stored under ids (see ``attachment_path``); this
name only travels in ``Content-Disposition`` and in exports, where it may end up
as a file name on someone's disk.
"""

import mimetypes
import posixpath
import re
import unicodedata

MAX_FILENAME_BYTES = 200
# An extension longer than this is not kept apart when a long name is cut.
MAX_EXTENSION_BYTES = 20
FALLBACK_NAME = "attachment"

# Device names Windows reserves whatever the extension ("con.txt", "CON .txt").
# NFKC (below) turns COM¹ into COM1, so superscript digits are covered too.
_WINDOWS_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"COM{n}" for n in range(10)]
    + [f"LPT{n}" for n in range(10)]
)
# Characters Windows refuses in a file name; ':' would also name an NTFS stream.
_WINDOWS_FORBIDDEN = re.compile(r'[<>:"|?*]')


def _is_unsafe_char(char: str) -> bool:
    # Cc: control, Cf: format (bidi overrides, zero-width), Cs/Co/Cn: not text.
    return unicodedata.category(char) in {"Cc", "Cf", "Cs", "Co", "Cn"}


def _is_reserved(name: str) -> bool:
    # Windows ignores what follows the first dot, and spaces before it.
    return name.split(".", 1)[0].rstrip(" ").upper() in _WINDOWS_RESERVED


def safe_filename(name: str | None, *, content_type: str = "") -> str:
    """Return a safe display name for an attachment called ``name``.

    A part without a usable name is called ``attachment``, with the extension of
    its ``content_type`` when one is known (``attachment.png``).
    """
    # NFKC folds look-alikes such as fullwidth solidus and superscript digits
    # into the ASCII they stand for, so the checks below see them.
    name = unicodedata.normalize("NFKC", name or "")
    name = "".join(" " if _is_unsafe_char(c) else c for c in name)
    # Keep only the last path component, whichever separator was used.
    name = posixpath.basename(name.replace("\\", "/"))
    name = _WINDOWS_FORBIDDEN.sub("_", name)
    name = re.sub(r"\s+", " ", name).strip(" .")
    if not name:
        extension = mimetypes.guess_extension(content_type or "") or ""
        return FALLBACK_NAME + extension
    if _is_reserved(name):
        name = f"_{name}"
    return _truncate(name)


def _split_extension(name: str) -> tuple[str, str]:
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or len(ext.encode()) > MAX_EXTENSION_BYTES:
        return name, ""
    return stem, ext


def _truncate(name: str, suffix: str = "") -> str:
    """Cut ``name`` to MAX_FILENAME_BYTES with ``suffix`` before its extension."""
    stem, ext = _split_extension(name)
    tail = suffix + (f".{ext}" if ext else "")
    if len(stem.encode()) + len(tail.encode()) <= MAX_FILENAME_BYTES:
        return stem + tail
    budget = MAX_FILENAME_BYTES - len(tail.encode())
    # Cut on a character boundary: errors="ignore" drops a split multibyte tail.
    stem = stem.encode()[:budget].decode(errors="ignore").rstrip(" .")
    return (stem or FALLBACK_NAME[: max(budget, 1)]) + tail


def dedupe_filenames(names: list[str]) -> list[str]:
    """Return ``names`` with repeats renamed ``report (2).pdf``, ``report (3).pdf``.

    Names compare without case, as on the file systems an export is unpacked
    on, and a renamed name still fits in MAX_FILENAME_BYTES.
    """
    seen: set[str] = set()
    out = []
    for name in names:
        candidate, n = _truncate(name), 1
        while candidate.casefold() in seen:
            n += 1
            candidate = _truncate(name, f" ({n})")
        seen.add(candidate.casefold())
        out.append(candidate)
    return out
