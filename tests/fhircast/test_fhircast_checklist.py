"""Every numbered FHIRcast check of the notes (§17, checks 1–44) has a test here.

A test covers check N when its name contains ``check_NN``. Checks that cannot apply to
this hub are listed with the reason; 45 and 46 are FHIR Subscription checks (issue 6,
point 4) and live with the subscriptions tests.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

NOT_APPLICABLE = {
    21: "the hub validates every request before answering, so it never rejects after a 202; "
    "stale updates are refused synchronously with 409 (check 31)",
}


def covered_checks() -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for path in Path(__file__).parent.glob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                for number in re.findall(r"check_(\d\d)", node.name):
                    found.setdefault(int(number), []).append(f"{path.name}::{node.name}")
    return found


def test_every_applicable_check_has_a_test():
    covered = covered_checks()
    missing = [n for n in range(1, 45) if n not in covered and n not in NOT_APPLICABLE]
    assert missing == []
    assert not set(NOT_APPLICABLE) & set(covered)
