"""The README stays true: its operator table is the rule table, its methods are the methods."""
import pathlib
import re

import onnxplain
from onnxplain.vjp import RULES

README = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"## {title}")
    end = README.find("\n## ", start + 1)
    return README[start:end if end != -1 else None]


def test_the_supported_operator_table_lists_exactly_the_ops_with_rules():
    table = [line for line in section("Supported operators").splitlines() if line.startswith("| ")][2:]
    listed = set()
    for row in table:
        family, ops = row.split("|")[1:3]
        prefix = "ai.onnx.ml." if "ai.onnx.ml" in family else ""
        listed |= {prefix + op for op in re.findall(r"`([A-Za-z0-9]+)`", ops)}
    assert listed == set(RULES), (f"in the README but without a rule: {sorted(listed - set(RULES))}; "
                                  f"with a rule but not in the README: {sorted(set(RULES) - listed)}")


def test_the_methods_table_lists_every_method():
    rows = [line for line in section("Methods").splitlines() if line.startswith("| `")]
    names = {re.match(r"\| `([a-z_]+)`", row).group(1) for row in rows}
    assert names == set(onnxplain.METHODS)
