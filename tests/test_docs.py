"""The documentation's promises: every public name has an API page and a docstring that states its contract
(numpydoc Parameters / Returns sections), the README's headline table is the one the results pages are written
from, every result has a page, and everything the README links is committed."""
from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import rerelrp
import rerelrp.datasets
import rerelrp.train

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "docs" / "_ext"))
import results_pages  # noqa: E402

API_INDEX = (ROOT / "docs" / "api" / "index.rst").read_text()


def public_names() -> dict[str, object]:
    """Every public name a user calls, by the name the API reference lists it under."""
    from rerelrp.avalanche import ReReLRPStrategy

    names = {name: getattr(rerelrp, name) for name in rerelrp.__all__ if name not in ("NotFittedError", "__version__")}
    names |= {f"datasets.{name}": getattr(rerelrp.datasets, name) for name in rerelrp.datasets.__all__
              if callable(getattr(rerelrp.datasets, name))}
    names |= {"train.TaskTraining": rerelrp.train.TaskTraining, "avalanche.ReReLRPStrategy": ReReLRPStrategy}
    return names


def public_methods() -> dict[str, object]:
    """The public methods the learner defines (scikit-learn's inherited ones are documented by scikit-learn)."""
    return {f"ReReLRP.{name}": member for name, member in vars(rerelrp.ReReLRP).items()
            if not name.startswith("_") and inspect.isfunction(member)}


def sections(doc: str) -> set[str]:
    """The numpydoc sections of a docstring (a title line underlined with dashes)."""
    return set(re.findall(r"^\s*([A-Z][a-z]+(?: [A-Z][a-z]+)?)\n\s*-{3,}\s*$", doc, flags=re.M))


def needs(obj) -> set[str]:
    """The sections the contract of ``obj`` needs: Parameters where it takes any, Returns where it returns."""
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return set()
    params = [p for p in signature.parameters.values() if p.name not in ("self", "cls")]
    needed = {"Parameters"} if params else set()
    if not inspect.isclass(obj) and signature.return_annotation not in (None, "None", inspect.Signature.empty):
        needed.add("Yields" if "Iterator" in str(signature.return_annotation) else "Returns")
    return needed


@pytest.mark.parametrize("name", sorted(public_names()))
def test_every_public_name_has_an_api_page(name):
    assert re.search(rf"^   {re.escape(name)}$", API_INDEX, flags=re.M), f"{name} is not in docs/api/index.rst"


@pytest.mark.parametrize("name, obj", sorted({**public_names(), **public_methods()}.items()))
def test_every_public_docstring_states_its_contract(name, obj):
    doc = inspect.getdoc(obj) or ""
    assert doc, f"{name} has no docstring"
    if issubclass(obj, Exception) if inspect.isclass(obj) else False:
        return  # an error's contract is when it is raised, which its docstring says
    found = sections(doc) | ({"Parameters"} if inspect.isclass(obj) and "Attributes" in sections(doc) else set())
    missing = needs(obj) - found  # a class users do not build (TaskTraining) states its Attributes instead
    assert not missing, f"{name}'s docstring has no {', '.join(sorted(missing))} section"


def test_readme_headline_table_is_the_results_one():
    assert results_pages.headline_table() in (ROOT / "README.md").read_text(), \
        "README's results table differs from the committed results.json files: paste headline_table()'s output"


def test_every_result_has_a_page_with_its_table(tmp_path, monkeypatch):
    monkeypatch.setattr(results_pages, "PAGES", tmp_path)
    written = results_pages.write_pages()
    files = sorted((ROOT / "docs" / "results").rglob("results.json"))
    assert len(written) == len(files) > 0
    for path in files:
        saved = json.loads(path.read_text())
        folder = path.parent.relative_to(ROOT / "docs" / "results").as_posix()
        text = (tmp_path / f"{folder}.md").read_text()
        assert results_pages.table_of(saved).splitlines()[2] in text
        if "config" in saved:
            assert f"--out docs/results/{folder}" in text


def test_everything_the_readme_links_is_committed():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: no list of committed files")
    committed = set(subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split())
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", (ROOT / "README.md").read_text())
    local = [link for link in links if not link.startswith(("http://", "https://"))]
    assert local
    missing = [link for link in local if link not in committed and not any(f.startswith(link.rstrip("/") + "/")
                                                                             for f in committed)]
    assert not missing, f"README links files that are not committed: {missing}"
