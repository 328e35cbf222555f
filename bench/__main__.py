"""
Run every benchmark module in this package (``bench/bench_*.py``) and print figures.

Each module has ``main()``, which prints its own table. Benchmarks need PostgreSQL:
set DATABASE_URL, or the default below (the local server on loopback) is used.
Run one with ``python -m bench usage``.
"""

import importlib
import os
import pkgutil
import sys
from pathlib import Path

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/agentpost_bench"


def main() -> None:
    os.environ.setdefault("DATABASE_URL", DEFAULT_DATABASE_URL)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "agentpost.settings")
    wanted = set(sys.argv[1:])
    names = sorted(
        m.name.removeprefix("bench_")
        for m in pkgutil.iter_modules([str(Path(__file__).parent)])
        if m.name.startswith("bench_")
    )
    for name in names:
        if wanted and name not in wanted:
            continue
        print(f"\n## {name}\n", flush=True)
        importlib.import_module(f"bench.bench_{name}").main()


if __name__ == "__main__":
    main()
