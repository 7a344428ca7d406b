"""The error reference in docs/errors.md has a section for every spmd.errors class, and the
link each message ends with names that file and section."""

import inspect
import pathlib
import re

import pytest

from spmd import errors

ROOT = pathlib.Path(__file__).resolve().parent.parent
ERROR_CLASSES = [
    cls
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, errors.SpmdError) and cls is not errors.SpmdError
]


def doc_sections() -> set[str]:
    text = (ROOT / errors.DOCS).read_text()
    return set(re.findall(r"^## (\S+)$", text, flags=re.MULTILINE))


def test_docs_link_is_a_file_of_the_repository():
    assert not errors.DOCS.startswith("http")
    assert (ROOT / errors.DOCS).is_file()


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_every_error_class_has_a_section_with_a_fix(cls):
    anchor = cls.__name__.lower()
    assert anchor in doc_sections(), f"docs/errors.md has no '## {anchor}' section"
    text = (ROOT / errors.DOCS).read_text()
    section = text.split(f"## {anchor}\n", 1)[1].split("\n## ", 1)[0]
    assert f"`{cls.__name__}`" in section and "Fix:" in section


def test_message_ends_with_the_section_link():
    message = str(errors.ShapeError("shapes (2, 3) and (4,) differ", hint="reshape"))
    last = message.splitlines()[-1].strip()
    assert last == "docs: docs/errors.md#shapeerror"
