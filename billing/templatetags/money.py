from django import template

register = template.Library()


@register.filter
def money(cents, currency: str = "usd") -> str:
    """Render an amount in cents: 4900 → "$49.00"."""
    if cents is None or cents == "":
        return "–"
    symbol = {"usd": "$", "eur": "€", "gbp": "£"}.get(str(currency).lower(), "")
    amount = int(cents) / 100
    text = f"{symbol}{abs(amount):,.2f}"
    return f"-{text}" if amount < 0 else text
