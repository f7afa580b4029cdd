"""A fixed-seed slice of the source fuzzer (benchmarks/fuzz.py; `make fuzz` runs 210 cases)."""
from __future__ import annotations

from benchmarks.fuzz import KINDS, fuzz


def test_twenty_fuzzed_sources_complete_or_fail_in_one_line(tmp_path):
    result = fuzz(seed=17, cases=20, cli=1, work=str(tmp_path), log=lambda *_: None)
    assert result["bad"] == []
    table = result["table"]
    assert set(table) == set(KINDS) and sum(sum(c.values()) for c in table.values()) == 20
    # both outcomes occur, so the slice is not all one kind of case
    assert sum(c["completed"] for c in table.values()) and sum(c["one-line error"] for c in table.values())
    [(_, code, last, ok)] = result["cli"]
    assert ok and code == 2 and last.startswith("tapeline: error: "), last
