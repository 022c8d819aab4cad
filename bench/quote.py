"""`python -m bench.quote [--check]`: the figures the documents quote, filled from bench/results.

README.md, docs/*.md and CHANGELOG.md's Unreleased section quote measured figures only through
a mark, an HTML comment pair that renders as nothing in Markdown:

    <!-- fig onboarding:fleet/import_s as {:.1f} s -->3.5 s<!-- /fig -->

- SOURCE, before ` as `: `name:label/key` is `figures[label][key]` of bench/results/<name>.json
  (a label may hold spaces, dots and `@`; the key is what follows its last `/`).
- TEMPLATE, after ` as ` (default `{}`): text with one or more fields in braces, each rendering
  the figure. A field is `{OPS:SPEC}`: OPS applied left to right, each `/N`, `*N`, `+N`, `-N`
  (the figure divided by N, ...), `N/` (N divided by the figure) or `~N` (rounded to N
  significant digits); SPEC a Python format spec (default `g`), exponents written short
  (`1.7e-14`). A field `{<=N}` (or `>=`, `<`, `>`) is a verdict on the figure against the goal N
  the sentence states: `meets` or `not met`, or the two words given after it (`{<=1e-9
  met/not met}`).
- The text between the comments is what the template gives; `python -m bench.quote` (and
  `python -m bench` after writing results) rewrites it, `--check` only reports differences.

A mark stays on one line and outside code blocks (where it would show). Marks in CHANGELOG.md's
released sections are not touched: a release keeps the figures it was published with.

`--check` also looks for figure phrases quoted without a mark (`unmarked`): a rate, a duration
in ms, a time in seconds with decimals, a share of the ceiling or floor, a failure rate. A phrase
of that shape that is not a figure of the results is listed in `ALLOWED` with the reason.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Results = dict[str, dict[str, Any]]  # results/<name>.json by name

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

_NUM = r"\d+(?:\.\d+)?(?:e[-+]?\d+)?"
MARK = re.compile(r"<!-- fig (?P<head>(?:(?!-->)[^\n])*?) -->(?P<text>[^\n]*?)<!-- /fig -->")
_OPEN = re.compile(r"<!-- fig\b")
_FIELD = re.compile(r"\{([^{}]*)\}")
_VERDICT = re.compile(rf"^\s*(<=|>=|<|>)\s*({_NUM})(?:\s+([^/]+)/(.+?))?\s*$")
_OP = re.compile(rf"\s*(?:({_NUM})/|([*/+-])({_NUM})|~(\d+))")
_FENCE = re.compile(r"^(```|~~~)", re.M)
_UNRELEASED = re.compile(r"^## \[Unreleased\][^\n]*\n", re.M)
_NEXT_SECTION = re.compile(r"^## \[", re.M)

# Figure phrases that must come from a mark: (what, pattern). Numbers as the documents write
# them: 1,050 or 0.77 or 1.7e-14.
_Q = r"(?<![\w.])\d[\d,]*(?:\.\d+)?"
PHRASES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("a rate", re.compile(rf"{_Q}\s*(?:onboardings?/s|/s|/min)\b")),
    ("a duration in ms", re.compile(rf"{_Q}\s*ms\b")),
    ("a time in seconds with decimals", re.compile(rf"{_Q}\.\d+\s*s\b")),
    ("a duration", re.compile(rf"\bin (?:about |under )?{_Q}\s*s\b")),
    (
        "a share of the ceiling or floor",
        re.compile(rf"{_Q}\s*% of (?:the [\w +-]*?(?:ceiling|floor)\b|it\b|that\b)"),
    ),
    # Measured and computed rates carry a decimal (1.7e-14); a target is written 1e-6.
    ("a failure rate", re.compile(r"(?<![\w.])\d\.\d+e-\d+")),
)

# Phrases of the documents that match PHRASES but are not figures of bench/results: a
# specification (a goal, a protocol constant), an analysis bench/ does not run (computed with
# host/puf: the model's BER, codes considered and not used), or in CHANGELOG.md the figure a
# change replaced.
# (document, exact phrase, why); tests/host/test_figures.py fails on an entry no longer used.
_SPEC = "a specification, not a measurement"
_ANALYSIS = "an analysis (density evolution or exact sum, host/puf), not in bench/results"
_BEFORE = "the figure before the change"
ALLOWED: tuple[tuple[str, str, str], ...] = (
    ("docs/operator.md", "60 % of the ceiling", f"{_SPEC}: the onboarding goal"),
    ("docs/operator.md", "40 ms", f"{_SPEC}: Linux's delayed-ACK timer (TCP_DELACK_MIN)"),
    ("CHANGELOG.md", "40 ms", f"{_SPEC}: Linux's delayed-ACK timer (TCP_DELACK_MIN)"),
    ("docs/identity.md", "≤ 1.5 s", f"{_SPEC}: the signing goal"),
    ("docs/console.md", "under 100 ms", f"{_SPEC}: the device list's goal"),
    ("README.md", "goal under 100 ms", f"{_SPEC}: the device list's goal"),
    ("docs/identity.md", "3.3e-43", f"{_ANALYSIS}: profile 4 at the model's BER"),
    ("docs/identity.md", "1.8e-49", f"{_ANALYSIS}: profile 2 at the model's BER"),
    ("docs/identity.md", "2.0e-6", f"{_ANALYSIS}: profile 3 (shortened) at 20 %"),
    ("docs/identity.md", "5.8e-12", f"{_ANALYSIS}: profile 3 (shortened) at 15 %"),
    ("docs/identity.md", "9.5e-8 / 6.3e-14", f"{_ANALYSIS}: bit-reversed shortening"),
    ("docs/identity.md", "4.6e-3 / 2.3e-6", f"{_ANALYSIS}: 1024 read bits"),
    ("docs/identity.md", "1.3e-4 / 1.0e-8", f"{_ANALYSIS}: 1280 read bits"),
    ("docs/identity.md", "1.4e-5 / 3.8e-10", f"{_ANALYSIS}: 1408 read bits"),
    ("docs/identity.md", "1.5e-6 / 1.3e-11", f"{_ANALYSIS}: 1536 read bits"),
    ("docs/identity.md", "1.7e-2", f"{_ANALYSIS}: rep 9 + BCH(198, 134, 8) at 20 %"),
    ("CHANGELOG.md", "was up to 2.0e-6", _BEFORE),
    ("CHANGELOG.md", "was 1.41 s", _BEFORE),
    ("CHANGELOG.md", "was 1.2 ms", _BEFORE),
    ("CHANGELOG.md", "44 ms at 3,000", _BEFORE),
    ("CHANGELOG.md", "was 9.1 ms", _BEFORE),
    ("CHANGELOG.md", "was 95 ms", _BEFORE),
)


class FigureError(Exception):
    """A mark whose source or template cannot give a figure; the message says which and why."""


@dataclass(frozen=True)
class Mark:
    document: str  # path relative to the repository
    line: int
    source: str
    template: str
    text: str
    start: int  # offsets of the text between the comments
    end: int


# Tables written whole from a result file by their own tool, and checked against it by their
# own test: docs/security.md's attack table (tests/attacks, test_attack_report.py).
GENERATED = re.compile(r"<!-- attacks -->.*?<!-- /attacks -->", re.DOTALL)


def documents(root: Path = ROOT) -> list[Path]:
    """Every document that may quote a figure."""
    return [root / "README.md", root / "CHANGELOG.md", *sorted((root / "docs").glob("*.md"))]


def quoted_region(path: Path, text: str) -> tuple[int, int]:
    """The part of a document whose marks are live: CHANGELOG.md's Unreleased section, else all."""
    if path.name != "CHANGELOG.md":
        return 0, len(text)
    head = _UNRELEASED.search(text)
    if head is None:
        return 0, 0
    nxt = _NEXT_SECTION.search(text, head.end())
    return head.end(), nxt.start() if nxt else len(text)


def _fenced(text: str) -> list[tuple[int, int]]:
    fences = [m.start() for m in _FENCE.finditer(text)]
    ends = [*fences[1::2], len(text)]
    return list(zip(fences[0::2], ends, strict=False))


def marks(path: Path, text: str, root: Path = ROOT) -> list[Mark]:
    lo, hi = quoted_region(path, text)
    name = path.relative_to(root).as_posix()
    found = []
    for m in MARK.finditer(text, lo, hi):
        head = m["head"]
        source, _, template = head.partition(" as ")
        found.append(
            Mark(
                name,
                text.count("\n", 0, m.start()) + 1,
                source.strip(),
                template.strip() or "{}",
                m["text"],
                m.start("text"),
                m.end("text"),
            )
        )
    return found


def load_results(results: Path = RESULTS) -> Results:
    return {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("*.json"))}


def lookup(results: Results, source: str) -> float:
    """The figure a source names: `name:label/key`."""
    name, sep, rest = source.partition(":")
    label, slash, key = rest.rpartition("/")
    if not sep or not slash or not label or not key:
        raise FigureError(f"source {source!r} is not name:label/key")
    if name not in results:
        raise FigureError(f"source {source!r}: no bench/results/{name}.json")
    figures = results[name].get("figures", {})
    if label not in figures:
        raise FigureError(f"source {source!r}: {name}.json has no figure {label!r}")
    if key not in figures[label]:
        have = ", ".join(sorted(figures[label]))
        raise FigureError(f"source {source!r}: figure {label!r} has no {key!r} (has {have})")
    return float(figures[label][key])


def _short_exponent(s: str) -> str:
    return re.sub(r"e([-+])0*(\d)", lambda m: "e" + ("-" if m[1] == "-" else "") + m[2], s)


def _field(body: str, value: float) -> str:
    verdict = _VERDICT.match(body)
    if verdict:
        goal = float(verdict[2])
        ok = {"<=": value <= goal, ">=": value >= goal, "<": value < goal, ">": value > goal}
        yes, no = (verdict[3], verdict[4]) if verdict[3] else ("meets", "not met")
        return yes if ok[verdict[1]] else no
    ops, _, spec = body.partition(":")
    pos = 0
    while pos < len(ops.rstrip()):
        op = _OP.match(ops, pos)
        if op is None:
            raise FigureError(f"field {{{body}}}: cannot read {ops[pos:]!r}")
        pos = op.end()
        if op[1] is not None:
            value = float(op[1]) / value
        elif op[2] is not None:
            n = float(op[3])
            value = {"*": value * n, "/": value / n, "+": value + n, "-": value - n}[op[2]]
        elif value:
            value = round(value, int(op[4]) - 1 - math.floor(math.log10(abs(value))))
    try:
        return _short_exponent(format(value, spec or "g"))
    except ValueError as e:
        raise FigureError(f"field {{{body}}}: {e}") from None


def render(template: str, value: float) -> str:
    """The text a template gives for a figure."""
    return _FIELD.sub(lambda m: _field(m[1], value), template)


@dataclass(frozen=True)
class Problem:
    document: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.document}:{self.line}: {self.message}"


def expected(mark: Mark, results: Results) -> str:
    return render(mark.template, lookup(results, mark.source))


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def layout_problems(path: Path, text: str, name: str) -> list[Problem]:
    """Marks that would show or could not be read: in a code block, or unclosed."""
    problems = []
    for lo, hi in _fenced(text):
        for m in _OPEN.finditer(text, lo, hi):
            problems.append(Problem(name, _line(text, m.start()), "a mark inside a code block"))
    for m in MARK.finditer(text):
        if "--" in m["head"] or m["head"].endswith("-"):
            # CommonMark 0.30 section 6.6: such a comment is not one, and would show.
            problems.append(Problem(name, _line(text, m.start()), "'--' inside a mark"))
    closed = {m.start() for m in MARK.finditer(text)}
    for m in _OPEN.finditer(text):
        if m.start() not in closed:
            problems.append(Problem(name, _line(text, m.start()), "a mark not closed on its line"))
    return problems


def unmarked(path: Path, text: str, root: Path = ROOT) -> list[Problem]:
    """Figure phrases outside marks, less the ALLOWED phrases of this document."""
    name = path.relative_to(root).as_posix()
    lo, hi = quoted_region(path, text)
    # Marks and the allowed phrases blanked out (same length: line numbers stay).
    body = MARK.sub(lambda m: " " * len(m[0]), text[:hi])
    body = GENERATED.sub(lambda m: " " * len(m[0]), body)
    for doc, phrase, _why in ALLOWED:
        if doc == name:
            body = body.replace(phrase, " " * len(phrase))
    found = []
    for what, pattern in PHRASES:
        for m in pattern.finditer(body, lo):
            found.append(Problem(name, _line(text, m.start()), f"{what} without a mark: {m[0]!r}"))
    return sorted(found, key=lambda p: p.line)


def refresh(
    root: Path = ROOT, results: Results | None = None, write: bool = True
) -> tuple[list[str], list[Problem]]:
    """Fill every mark from the results (`write`) or compare only; returns the documents
    changed (or that would change) and the problems found."""
    results = load_results(root / "bench" / "results") if results is None else results
    changed: list[str] = []
    problems: list[Problem] = []
    for path in documents(root):
        if not path.exists():
            continue
        text = path.read_text()
        name = path.relative_to(root).as_posix()
        problems += layout_problems(path, text, name)
        new, pos = [], 0
        for mark in marks(path, text, root):
            try:
                want = expected(mark, results)
            except FigureError as e:
                problems.append(Problem(name, mark.line, str(e)))
                continue
            if want != mark.text:
                if not write:
                    problems.append(
                        Problem(
                            name,
                            mark.line,
                            f"{mark.source} gives {want!r}, the text says {mark.text!r}",
                        )
                    )
                new += [text[pos : mark.start], want]
                pos = mark.end
        if new:
            changed.append(name)
            if write:
                path.write_text("".join(new) + text[pos:])
                text = path.read_text()
        if not write:
            problems += unmarked(path, text, root)
    return changed, problems


def main(argv: list[str]) -> int:
    check = "--check" in argv
    unknown = [a for a in argv if a != "--check"]
    if unknown:
        print("usage: python -m bench.quote [--check]", file=sys.stderr)
        return 2
    changed, problems = refresh(write=not check)
    for p in problems:
        print(p, file=sys.stderr)
    if check:
        if not problems:
            print("figures: every quoted figure is marked and equals bench/results")
        return 1 if problems else 0
    for name in changed:
        print(f"  figures refreshed: {name}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
