"""The READMEs: the spec reference matches the spec model, in both languages."""

from pathlib import Path

from pipeline.specdoc import DOCS, embed, fields

ROOT = Path(__file__).resolve().parents[1]


def test_every_field_documented():
    paths = {path for path, _, _ in fields()}
    assert paths - set(DOCS) == set()
    assert set(DOCS) - paths == set()
    for path, (english, vietnamese) in DOCS.items():
        assert english.strip(), path
        assert vietnamese.strip(), path
        assert english != vietnamese or path in ("train.lr", "search.sampler"), path


def test_readme_reference_is_current():
    for name, lang in (("README.md", "en"), ("README.vi.md", "vi")):
        path = ROOT / name
        assert path.read_text(encoding="utf-8") == embed(path, lang), f"{name}: paste the output of 'playbook spec-reference --lang {lang}' between the markers"


def test_readme_links_exist():
    import re

    for name in ("README.md", "README.vi.md"):
        text = (ROOT / name).read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#][^)]*)\)", text):
            if not target.startswith("http"):
                assert (ROOT / target).exists(), f"{name} links to missing {target}"
