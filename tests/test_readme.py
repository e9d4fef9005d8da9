"""The README's Python blocks run as printed, in order, in one namespace (on data that ships with scikit-learn)."""
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_blocks_run_as_printed(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2, "the README's Use section has lost its examples"
    monkeypatch.chdir(tmp_path)  # the examples save files in the working directory
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
    accuracy = float(re.search(r"accuracy without task id: ([0-9.]+)", capsys.readouterr().out).group(1))
    assert accuracy > 0.8  # the first example learns the digits, without task ids
    assert (tmp_path / "digits.rerelrp").is_file()
