"""
Attachment names are data, never paths.

``safe_filename`` keeps what a person would recognise of a name and drops what
could hurt: directory parts, NUL and control characters, bidirectional overrides
that disguise an extension, names Windows reserves, and excess length. Files are
stored under ids (see ``attachment_path``); this name only travels in
``Content-Disposition`` and in exports.
"""

import posixpath
import re
import unicodedata

MAX_FILENAME_BYTES = 200
FALLBACK_NAME = "attachment"

_WINDOWS_RESERVED = re.compile(r"^(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?$", re.I)


def _is_unsafe_char(char: str) -> bool:
    # Cc: control, Cf: format (bidi overrides, zero-width), Cs/Co/Cn: not text.
    return unicodedata.category(char) in {"Cc", "Cf", "Cs", "Co", "Cn"}


def safe_filename(name: str | None) -> str:
    """Return a safe display name for an attachment called ``name``."""
    name = unicodedata.normalize("NFC", name or "")
    name = "".join(" " if _is_unsafe_char(c) else c for c in name)
    # Keep only the last path component, whichever separator was used.
    name = posixpath.basename(name.replace("\\", "/"))
    name = re.sub(r"\s+", " ", name).strip(" .")
    if not name:
        return FALLBACK_NAME
    if _WINDOWS_RESERVED.match(name):
        name = f"_{name}"
    return _truncate(name)


def _truncate(name: str) -> str:
    if len(name.encode()) <= MAX_FILENAME_BYTES:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or len(ext.encode()) > 20:
        stem, ext = name, ""
    budget = MAX_FILENAME_BYTES - len(ext.encode()) - (1 if ext else 0)
    stem = stem.encode()[:budget].decode(errors="ignore").rstrip(" .")
    return f"{stem}.{ext}" if ext else stem


def dedupe_filenames(names: list[str]) -> list[str]:
    """Return ``names`` with repeats renamed ``report (2).pdf``, ``report (3).pdf``."""
    seen: set[str] = set()
    out = []
    for name in names:
        candidate, n = name, 1
        while candidate.lower() in seen:
            n += 1
            stem, dot, ext = name.rpartition(".")
            candidate = f"{stem} ({n}).{ext}" if dot and stem else f"{name} ({n})"
        seen.add(candidate.lower())
        out.append(candidate)
    return out
