from django import template

register = template.Library()

UNITS = ("bytes", "KB", "MB", "GB", "TB")


@register.filter(name="bytes")
def format_bytes(value) -> str:
    """Render a byte count for people: 1536 → "1.5 KB"."""
    if value is None:
        return "–"
    if value < 0:
        return f"-{format_bytes(-value)}"
    size = float(value)
    for unit in UNITS:
        if size < 1024 or unit == UNITS[-1]:
            return f"{int(size)} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return str(value)
