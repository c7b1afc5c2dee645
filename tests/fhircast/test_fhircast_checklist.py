"""Every numbered check of the notes (§17, checks 1–46) has a test.

A test covers check N when its name contains ``check_NN``. Checks 1–44 (FHIRcast) live
in this folder; 45 and 46 (FHIR Subscriptions: event numbers and gaps, the R4 websocket
``bind``) live with the subscriptions tests. Checks that cannot apply to this hub are
listed with the reason.
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
    tests = Path(__file__).parent.parent
    for path in [*tests.glob("fhircast/test_*.py"), *tests.glob("subscriptions/test_*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                for number in re.findall(r"check_(\d\d)", node.name):
                    found.setdefault(int(number), []).append(f"{path.name}::{node.name}")
    return found


def test_every_applicable_check_has_a_test():
    covered = covered_checks()
    missing = [n for n in range(1, 47) if n not in covered and n not in NOT_APPLICABLE]
    assert missing == []
    assert not set(NOT_APPLICABLE) & set(covered)
