"""Just enough PromQL reading for the ops assets' tests: which metrics, labels and
functions an expression names.

Not a parser: it tokenises, drops string contents, ranges and grouping clauses, and
reports what is left. That is enough to catch a misspelt metric, label or function
in a dashboard or an alert rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

FUNCTIONS = frozenset(
    """
    abs absent absent_over_time avg_over_time ceil changes clamp clamp_max clamp_min
    count_over_time day_of_month day_of_week days_in_month delta deriv exp floor
    histogram_quantile holt_winters hour idelta increase irate label_join label_replace
    last_over_time ln log10 log2 max_over_time min_over_time minute month predict_linear
    present_over_time quantile_over_time rate resets round scalar sgn sort sort_desc sqrt
    stddev_over_time stdvar_over_time sum_over_time time timestamp vector year
    sum min max avg group stddev stdvar count count_values bottomk topk quantile
    """.split()
)
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset"})
GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})

_TOKEN = re.compile(
    r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    | (?P<var>\$\{[^}]*\}|\$\w+)
    | (?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[smhdwy]?)
    | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<braces>\{[^}]*\})
    | (?P<range>\[[^\]]*\])
    | (?P<open>\()
    | (?P<close>\))
    | (?P<space>\s+)
    | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)
_MATCHER = re.compile(r"""([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*")""")


@dataclass
class Selector:
    metric: str
    labels: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # label -> [(op, value)]


@dataclass
class Names:
    selectors: list[Selector] = field(default_factory=list)
    functions: set[str] = field(default_factory=set)

    @property
    def metrics(self) -> set[str]:
        return {s.metric for s in self.selectors}


def _matchers(block: str) -> dict[str, list[tuple[str, str]]]:
    labels: dict[str, list[tuple[str, str]]] = {}
    inner = block[1:-1]
    for name, op, quoted in _MATCHER.findall(inner):
        labels.setdefault(name, []).append((op, quoted[1:-1]))
    rest = _MATCHER.sub("", inner).replace(",", "").strip()
    if rest:
        raise ValueError(f"unreadable label matchers {block!r}")
    return labels


def read(expr: str) -> Names:
    """The metrics (with their label matchers) and functions `expr` names."""
    tokens = [
        (m.lastgroup, m.group())
        for m in _TOKEN.finditer(expr)
        if m.lastgroup not in ("space", "string", "var")
    ]
    names = Names()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else (None, "")
        if kind == "other" and text in "{}[]":
            raise ValueError(f"unbalanced {text!r} in {expr!r}")
        if kind != "ident":
            i += 1
            continue
        if text in GROUPING:
            i = _skip_group(tokens, i + 1, expr)
            continue
        if text in KEYWORDS:
            i += 1
            continue
        if following[0] == "open" or (following[0] == "ident" and following[1] in GROUPING):
            names.functions.add(text)
            i += 1
            continue
        selector = Selector(text)
        if following[0] == "braces":
            selector.labels = _matchers(following[1])
            i += 1
        names.selectors.append(selector)
        i += 1
    return names


def _skip_group(tokens: list[tuple[str, str]], i: int, expr: str) -> int:
    """Past `by (a, b)`-style label lists, which name labels, not metrics."""
    if i >= len(tokens) or tokens[i][0] != "open":
        raise ValueError(f"grouping without a label list in {expr!r}")
    while i < len(tokens) and tokens[i][0] != "close":
        i += 1
    return i + 1


def grouping_labels(expr: str) -> set[str]:
    """Labels named in by/without/on/ignoring/group_* clauses."""
    found: set[str] = set()
    for match in re.finditer(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr):
        found.update(part.strip() for part in match.group(1).split(",") if part.strip())
    return found
