"""`bench/suite.py` reads pytest's --durations lines and closing line, and renders them."""

from __future__ import annotations

from bench.suite import Part, pytest_parts, render, slowest_tests

LOG = """\
============================= slowest 3 durations ==============================
2.50s call     tests/test_a.py::test_one
10.25s setup    tests/training/test_b.py::test_two[x]
0.01s teardown tests/test_a.py::test_one
===================== 2 passed, 1 skipped in 14.00s (0:00:14) ======================
"""


def test_durations_are_read_slowest_first():
    assert slowest_tests(LOG) == [
        (10.25, "setup tests/training/test_b.py::test_two[x]"),
        (2.5, "call tests/test_a.py::test_one"),
        (0.01, "teardown tests/test_a.py::test_one"),
    ]


def test_the_section_sums_the_parts_and_lists_before_and_after():
    parts = [Part("install", 90.0), Part("parallel part", 390.0, "2 passed", slowest_tests(LOG))]
    section = render(parts, [(600.0, "call tests/old.py::test_slow")], "the run before")
    assert "**Total 8.0 min**" in section
    assert "| parallel part | 6.5 min | 2 passed |" in section
    assert "| 10.2 | `setup tests/training/test_b.py::test_two[x]` |" in section
    assert "the slowest tests of the run before" in section
    assert "| 600.0 | `call tests/old.py::test_slow` |" in section


def test_each_pytest_run_of_make_test_is_a_part():
    banner = "============================= test session starts ==============================\n"
    parts = pytest_parts(f"ruff: All checks passed!\n{banner}{LOG}{banner}{LOG}")
    assert [(p.name, p.seconds, p.outcome) for p in parts] == [
        ("pytest run 1 of 2", 14.0, "2 passed, 1 skipped"),
        ("pytest run 2 of 2", 14.0, "2 passed, 1 skipped"),
    ]
    assert parts[0].slowest == slowest_tests(LOG)
