"""The README's Python examples run as written (```python blocks; ```py blocks need real weights and are shown only)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    monkeypatch.chdir(tmp_path)
    namespace = {}  # later blocks continue the first, as in a session
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    assert (tmp_path / "out/model/model.safetensors").is_file()
