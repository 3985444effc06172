"""Generated tables inside hand-written READMEs: the prose around them survives every rewrite."""

from __future__ import annotations

import pytest

from splml.utils.markdown import write_generated_block


def test_block_is_replaced_and_prose_kept(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\nintro\n\n<!-- BEGIN t -->\nold table\n<!-- END t -->\n\nafter\n")
    write_generated_block(readme, "t", "| a |\n|---|\n| 1 |\n")
    write_generated_block(readme, "t", "| a |\n|---|\n| 2 |\n")
    assert readme.read_text() == "# Title\n\nintro\n\n<!-- BEGIN t -->\n| a |\n|---|\n| 2 |\n<!-- END t -->\n\nafter\n"


def test_missing_block_is_appended_under_its_heading_and_others_are_untouched(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n<!-- BEGIN other -->\nkeep\n<!-- END other -->\n")
    write_generated_block(readme, "t", "new", heading="## Measured")
    text = readme.read_text()
    assert text.endswith("\n\n## Measured\n\n<!-- BEGIN t -->\nnew\n<!-- END t -->\n")
    assert "<!-- BEGIN other -->\nkeep\n<!-- END other -->" in text


def test_unpaired_marker_is_an_error_not_a_guess(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- BEGIN t -->\nprose that must not be deleted\n")
    with pytest.raises(ValueError, match="README.md: has <!-- BEGIN t --> without its pair"):
        write_generated_block(readme, "t", "x")
    assert readme.read_text() == "<!-- BEGIN t -->\nprose that must not be deleted\n"
