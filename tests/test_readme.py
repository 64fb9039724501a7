"""The README's tables are the registries' contents: a model or method added without its row, a row
left for one removed, or a title that differs from the registry's (the report's row label) fails here;
and every page of docs/ it links to exists, as do the pages those link to."""

import pathlib
import re

from mtan_jax import weighting
from mtan_jax.models import registry

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def _table_under(text: str, heading: str) -> list[list[str]]:
  """The first Markdown table after `heading`: its body rows as lists of cells (header and rule left
  out), code spans unwrapped."""
  section = text.split(f"\n{heading}\n", 1)[1]
  lines = section.split("\n")
  start = next(i for i, line in enumerate(lines) if line.startswith("|"))
  rows = []
  for line in lines[start + 2:]:
    if not line.startswith("|"):
      break
    rows.append([cell.strip().strip("`") for cell in line.strip("|").split("|")])
  return rows


def test_the_models_table_lists_every_registry_entry_with_its_title():
  rows = _table_under(README.read_text(), "## Models")
  assert [row[0] for row in rows] == list(registry.MODELS)
  assert {row[0]: row[1] for row in rows} == registry.TITLES


def test_the_methods_table_lists_every_weighting():
  rows = _table_under(README.read_text(), "## Methods")
  names = [row[0] for row in rows]
  assert len(names) == len(set(names))
  assert sorted(names) == list(weighting.NAMES)
  assert all(row[1] in ("loss", "gradient") for row in rows)


def _links(page: pathlib.Path) -> list[pathlib.Path]:
  """The local files a Markdown page links to (anchors dropped), resolved from its folder."""
  targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text())
  return [(page.parent / t).resolve() for t in targets if not re.match(r"[a-z]+://", t)]


def test_every_page_the_readme_and_the_manual_link_to_exists():
  readme_links = _links(README)
  assert any(link.parent == ROOT / "docs" for link in readme_links)
  pages = [README, *sorted((ROOT / "docs").glob("*.md"))]
  missing = [(page.name, str(link.relative_to(ROOT))) for page in pages for link in _links(page)
             if not link.exists()]
  assert missing == []
  unlinked = [p.name for p in pages[1:] if p.resolve() not in readme_links]
  assert unlinked == [], "every page of docs/ is reachable from the README"
