"""Every ErrorInfo reason the coordinator raises is named in the README's list of reasons or in docs/security.md
(review round 20: HELLO_REPEATED, STREAM_STALLED, RECEIPT_KEY_RETIRED and RECEIPT_KEY_IN_USE were raised and not
listed). Reasons are found in the source: string constants of the calls that build errors and refused acks."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILDERS = {"invalid", "CoordinatorError", "IllegalTransition", "_unauthenticated", "_exhausted", "AckOut"}
# never reach a caller: a transition refused between two live states is a bug; a COMPLETED job's result is
# committed with it
INTERNAL = {"ILLEGAL_TRANSITION", "RESULT_NOT_FOUND"}


def raised_reasons() -> set[str]:
    found: set[str] = set()
    for path in (ROOT / "coordinator").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            if name not in BUILDERS:
                continue
            for arg in [*node.args, *(k.value for k in node.keywords if k.arg == "reason")]:
                values = [arg.body, arg.orelse] if isinstance(arg, ast.IfExp) else [arg]
                for value in values:
                    if isinstance(value, ast.Constant) and isinstance(value.value, str):
                        if re.fullmatch(r"[A-Z][A-Z_]{3,}", value.value):
                            found.add(value.value)
    return found


def test_every_raised_reason_is_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    listed = readme[readme.index("Reasons: ") : readme.index("- **The miner stream**")]
    security = (ROOT / "docs" / "security.md").read_text()
    raised = raised_reasons()
    assert {"JOB_NOT_FOUND", "KEY_DISABLED", "NOT_STORED", "WRONG_ROLE"} <= raised  # the scan finds them
    missing = sorted(r for r in raised - INTERNAL if f"`{r}`" not in listed and f"`{r}`" not in security)
    assert not missing, f"reasons raised but not documented: {missing}"
