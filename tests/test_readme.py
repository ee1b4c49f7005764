"""The README's code runs as written (its Keras section end to end)."""

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _block(heading):
    """The first ```python block under a '## heading' of README.md."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.parametrize("heading", ["Keras models"])
def test_readme_section_runs(heading, tmp_path):
    code = _block(heading).replace("/tmp/so_export", str(tmp_path))
    scope = {}
    exec(compile(code, f"README.md ({heading})", "exec"), scope)  # pylint: disable=exec-used
    for style in ("functional", "net", "sparse"):
        assert any(p.startswith(style) for p in os.listdir(tmp_path)), os.listdir(tmp_path)
    assert scope["logits"].shape == (2, 3)
