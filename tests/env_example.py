"""The settings of .env.example, as the README's walkthroughs use them (their keys, their example values)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def env_example() -> dict[str, str]:
    """.env.example's KEY=value lines (comments and trailing comments left out)."""
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.split("#", 1)[0].strip()
    return values
