"""``benchmarks/RESULTS.md`` is a short index: the hand-written summary and a generated list of the records.

The committed file must equal what ``python -m benchmarks.results_index`` writes, so the list cannot go stale
when a record is added, renamed or retitled; and the records are not copied into it again.
"""

import re

import pytest

from benchmarks import results_index
from benchmarks.results_index import END, RESULTS_DIR, RESULTS_MD, START, first_heading, index_lines, render

LINK = re.compile(r"\]\(([^)]+)\)")


def test_committed_results_md_is_what_the_script_writes():
    committed = RESULTS_MD.read_text(encoding="utf-8")
    assert render(committed) == committed, "RESULTS.md is stale: run `python -m benchmarks.results_index`"
    assert results_index.main(["--check"]) == 0


def test_every_record_is_linked_with_its_heading_and_every_link_resolves():
    committed = RESULTS_MD.read_text(encoding="utf-8")
    records = sorted(RESULTS_DIR.glob("*.md"))
    assert len(records) >= 7
    links = set(LINK.findall(committed))
    for path in records:
        assert f"results/{path.name}" in links
        assert f"(results/{path.name}): {first_heading(path)}\n" in committed
    for link in links:
        if not link.startswith(("http:", "https:", "#")):
            assert (RESULTS_MD.parent / link.split("#")[0]).is_file(), link


def test_results_md_stays_a_short_index_with_the_summary():
    text = RESULTS_MD.read_text(encoding="utf-8")
    assert len(text.splitlines()) < 120
    assert "## Summary against the issues' targets" in text
    assert "| issue | measure | target | measured | holds |" in text
    # no second copy of a record: no record's own sub-headings appear in the index
    for path in RESULTS_DIR.glob("*.md"):
        sub_headings = [
            line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("## ")
        ]
        for heading in sub_headings:
            assert f"\n#{heading}\n" not in text and f"\n{heading}\n" not in text, (path.name, heading)


def test_render_is_deterministic_idempotent_and_follows_the_folder(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "b.md").write_text("```bash\n# a comment, not a heading\n```\n# Bee area\n\n## Run 1\n")
    (results / "a.md").write_text("Intro without heading.\n\n## Aye: the first heading\n")
    page = f"# Title\n\nkept by hand\n\n{START}\n- stale line\n{END}\n\ntail kept\n"
    once = render(page, results, tmp_path)
    assert once == render(once, results, tmp_path)
    assert once == (
        f"# Title\n\nkept by hand\n\n{START}\n"
        "- [`results/a.md`](results/a.md): Aye: the first heading\n"
        "- [`results/b.md`](results/b.md): Bee area\n"
        f"{END}\n\ntail kept\n"
    )
    (results / "c.md").write_text("# Sea\n")
    assert "- [`results/c.md`](results/c.md): Sea" in render(once, results, tmp_path)
    assert index_lines(results, tmp_path)[-1].endswith(": Sea")


@pytest.mark.parametrize(
    "page",
    ["no markers at all\n", f"{START}\nonly the start\n", f"{END}\n{START}\n", f"{START}\n{START}\n{END}\n"],
)
def test_render_refuses_missing_or_misplaced_markers(page, tmp_path):
    with pytest.raises(ValueError, match="must contain"):
        render(page, tmp_path, tmp_path)
