"""The figures README.md, docs/*.md and CHANGELOG.md quote are bench/results' (bench/quote.py):
every mark names a figure the results hold and shows what its template gives, no figure phrase
is quoted without a mark, and the tool itself finds what it must find."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import quote

DOCS = [p for p in quote.documents() if p.exists()]
IDS = [p.relative_to(quote.ROOT).as_posix() for p in DOCS]

# Figures a document is the place for: removing their mark (and quoting the number by hand, or
# not at all) fails here.
KNOWN = {
    "README.md": {
        "device_identity:boot_identity/rp2040_ms",
        "onboarding:onboarding/per_s",
        "onboarding:fleet/import_s",
        "demo_time:demo/wall_s",
        "puf_failure:p4 bounds@0.20/upper",
    },
    "docs/identity.md": {
        "device_identity:boot_identity/rp2040_ms",
        "device_identity:boot_identity/peak_heap_B",
        "puf_failure:p4 bounds@0.20/upper",
    },
    "docs/console.md": {
        "console:devices_page/p95_ms",
        "console:live 50/p95_ms",
    },
    "docs/operator.md": {
        "onboarding:onboarding/per_s",
        "onboarding:ceiling/ratio_pct",
        "onboarding:floor/reached_pct",
        "onboarding:floor/reached_pct_low",
        "onboarding:floor/reached_pct_high",
    },
}


@pytest.fixture(scope="module")
def results() -> quote.Results:
    return quote.load_results()


@pytest.mark.parametrize("path", DOCS, ids=IDS)
def test_every_mark_names_a_figure_the_results_hold(path: Path, results: quote.Results) -> None:
    missing = []
    for mark in quote.marks(path, path.read_text()):
        try:
            quote.lookup(results, mark.source)
        except quote.FigureError as e:
            missing.append(f"line {mark.line}: {e}")
    assert not missing, missing


@pytest.mark.parametrize("path", DOCS, ids=IDS)
def test_every_marked_figure_equals_what_the_results_give(
    path: Path, results: quote.Results
) -> None:
    wrong = [
        f"line {m.line}: {m.source} gives {quote.expected(m, results)!r}, text {m.text!r}"
        for m in quote.marks(path, path.read_text())
        if quote.expected(m, results) != m.text
    ]
    assert not wrong, f"{wrong}; run: python -m bench.quote"


@pytest.mark.parametrize("path", DOCS, ids=IDS)
def test_no_figure_phrase_is_quoted_without_a_mark(path: Path) -> None:
    found = [str(p) for p in quote.unmarked(path, path.read_text())]
    assert not found, found


@pytest.mark.parametrize("path", DOCS, ids=IDS)
def test_marks_are_closed_on_their_line_and_outside_code_blocks(path: Path) -> None:
    name = path.relative_to(quote.ROOT).as_posix()
    assert quote.layout_problems(path, path.read_text(), name) == []


@pytest.mark.parametrize(("name", "sources"), sorted(KNOWN.items()))
def test_each_document_quotes_its_known_figures_through_marks(name: str, sources: set) -> None:
    path = quote.ROOT / name
    quoted = {m.source for m in quote.marks(path, path.read_text())}
    assert sources <= quoted, sorted(sources - quoted)


@pytest.mark.parametrize(
    ("document", "phrase", "why"), quote.ALLOWED, ids=[f"{d}:{p}" for d, p, _ in quote.ALLOWED]
)
def test_each_allowed_phrase_is_still_in_its_document(document: str, phrase: str, why: str) -> None:
    """An entry of the allow-list that no document uses any more only hides a future mistake."""
    path = quote.ROOT / document
    text = quote.MARK.sub("", path.read_text())
    assert phrase in text, f"{document} no longer says {phrase!r} ({why}): drop it from ALLOWED"
    assert any(p.search(phrase) for _what, p in quote.PHRASES), f"{phrase!r} needs no entry"


# -- the tool ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "value", "text"),
    [
        ("{/1000:.2f} s", 799.5299, "0.80 s"),
        ("{/1024:.0f} KiB", 56320.0, "55 KiB"),
        ("{~3:,.0f}/min", 19442.0, "19,400/min"),
        ("{~3:,.0f}", 1048.5, "1,050"),
        ("{:.1e}", 1.7200732852015648e-14, "1.7e-14"),
        ("{:.2e}", 0.0010473142364546642, "1.05e-3"),
        ("{-0.5:.3f}", 0.5241298653363775, "0.024"),
        ("{1e-6/:.0f}×", 1.2992816945478008e-08, "77×"),
        ("{:.0f} % (goal 60 %: {>=60})", 30.9, "31 % (goal 60 %: not met)"),
        ("{}", 131.0, "131"),
    ],
)
def test_a_template_renders_the_figure(template: str, value: float, text: str) -> None:
    assert quote.render(template, value) == text


@pytest.mark.parametrize(
    ("template", "value", "text"),
    [
        ("{<=1000}", 1000.0, "meets"),
        ("{<=1000}", 1000.1, "not met"),
        ("{<1000}", 1000.0, "not met"),
        ("{>=60}", 60.0, "meets"),
        ("{>=60 within/out of}", 59.9, "out of"),
        ("{<=1e-9 met/not met}", 5.4e-10, "met"),
    ],
)
def test_a_verdict_is_taken_against_the_goal_on_both_sides(
    template: str, value: float, text: str
) -> None:
    assert quote.render(template, value) == text


def test_a_field_that_cannot_be_read_is_refused() -> None:
    with pytest.raises(quote.FigureError, match="cannot read"):
        quote.render("{%2:.1f}", 1.0)
    with pytest.raises(quote.FigureError):
        quote.render("{:.1q}", 1.0)


def _tree(tmp_path: Path, readme: str, changelog: str = "") -> Path:
    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "docs").mkdir()
    figures = {"fleet": {"import_s": 3.53, "wall_s": 30.86}, "onboarding": {"per_s": 324.0}}
    (tmp_path / "bench" / "results" / "onboarding.json").write_text(
        json.dumps({"figures": figures})
    )
    (tmp_path / "README.md").write_text(readme)
    (tmp_path / "CHANGELOG.md").write_text(changelog)
    return tmp_path


def test_a_stale_figure_is_reported_then_rewritten(tmp_path: Path) -> None:
    root = _tree(
        tmp_path, "in <!-- fig onboarding:fleet/import_s as {:.1f} s -->0.9 s<!-- /fig -->.\n"
    )
    changed, problems = quote.refresh(root, write=False)
    assert changed == ["README.md"]
    assert [p.message for p in problems] == [
        "onboarding:fleet/import_s gives '3.5 s', the text says '0.9 s'"
    ]
    assert "0.9 s" in (root / "README.md").read_text()  # --check writes nothing
    quote.refresh(root, write=True)
    assert (root / "README.md").read_text() == (
        "in <!-- fig onboarding:fleet/import_s as {:.1f} s -->3.5 s<!-- /fig -->.\n"
    )
    assert quote.refresh(root, write=False) == ([], [])


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("nothing:fleet/import_s", "no bench/results/nothing.json"),
        ("onboarding:ships/import_s", "has no figure 'ships'"),
        ("onboarding:fleet/export_s", "has no 'export_s' (has import_s, wall_s)"),
        ("onboarding-fleet-import_s", "is not name:label/key"),
    ],
)
def test_a_mark_naming_no_figure_is_reported(tmp_path: Path, source: str, error: str) -> None:
    root = _tree(tmp_path, f"<!-- fig {source} -->3.5<!-- /fig -->\n")
    _changed, problems = quote.refresh(root, write=True)
    assert len(problems) == 1 and error in problems[0].message
    assert (root / "README.md").read_text() == f"<!-- fig {source} -->3.5<!-- /fig -->\n"


@pytest.mark.parametrize(
    "sentence",
    [
        "324 onboardings/s",
        "1,050/s",
        "19,400/min",
        "p99 199 ms",
        "boot 0.80 s on RP2040",
        "the fleet onboards in 31 s",
        "telemetry in about 10 s",
        "31 % of the in-run crypto + TLS ceiling",
        "59 % of that",
        "key failure 1.3e-8",
    ],
)
def test_a_figure_phrase_without_a_mark_is_found(tmp_path: Path, sentence: str) -> None:
    root = _tree(tmp_path, f"Text: {sentence}.\n")
    found = quote.unmarked(root / "README.md", (root / "README.md").read_text(), root)
    assert len(found) == 1 and found[0].line == 1


@pytest.mark.parametrize(
    "sentence",
    [
        "<!-- fig onboarding:onboarding/per_s -->324<!-- /fig --> onboardings/s",
        "a body must arrive within 10 s",
        "a 1e-6 target at 20 % BER",
        "Hamming weight outside 35-65 %; more than 25 % of the response bits corrected",
        "a 64 KiB heap",
    ],
)
def test_a_spec_or_a_marked_figure_is_not_a_figure_phrase(tmp_path: Path, sentence: str) -> None:
    root = _tree(tmp_path, f"Text: {sentence}.\n")
    assert quote.unmarked(root / "README.md", (root / "README.md").read_text(), root) == []


def test_a_mark_in_a_code_block_or_left_open_is_reported(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        "```\n<!-- fig onboarding:fleet/wall_s -->30.86<!-- /fig -->\n```\n"
        "open <!-- fig onboarding:fleet/wall_s -->30.86\n<!-- /fig -->\n",
    )
    _changed, problems = quote.refresh(root, write=False)
    assert [(p.line, p.message) for p in problems] == [
        (2, "a mark inside a code block"),
        (4, "a mark not closed on its line"),
    ]


def test_a_mark_that_markdown_would_not_read_as_a_comment_is_reported(tmp_path: Path) -> None:
    root = _tree(
        tmp_path, "<!-- fig onboarding:fleet/wall_s as {:g} -- s -->30.86 -- s<!-- /fig -->\n"
    )
    _changed, problems = quote.refresh(root, write=False)
    assert [p.message for p in problems] == ["'--' inside a mark"]


def test_only_the_changelog_unreleased_section_is_live(tmp_path: Path) -> None:
    changelog = (
        "# Changelog\n## [Unreleased]\n"
        "- <!-- fig onboarding:onboarding/per_s as {:.0f} -->1<!-- /fig --> onboardings/s\n"
        "## [0.1.0]\n"
        "- <!-- fig onboarding:onboarding/per_s as {:.0f} -->113<!-- /fig --> onboardings/s, "
        "was 90 onboardings/s\n"
    )
    root = _tree(tmp_path, "", changelog)
    quote.refresh(root, write=True)
    text = (root / "CHANGELOG.md").read_text()
    assert "-->324<!-- /fig --> onboardings/s\n## [0.1.0]" in text
    assert "-->113<!-- /fig --> onboardings/s, was 90" in text
    assert quote.refresh(root, write=False) == ([], [])
