"""The Python blocks of the README and of the docs' Getting started page run as printed, in order, in one namespace
each (on data that ships with scikit-learn)."""
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("page", ["README.md", "docs/getting-started.md"])
def test_python_blocks_run_as_printed(page, tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / page).read_text(), flags=re.S)
    assert len(blocks) >= 2, f"{page} has lost its examples"
    monkeypatch.chdir(tmp_path)  # the examples save files in the working directory
    namespace: dict = {}
    threads = torch.get_num_threads()  # the examples set one thread, as they advise
    try:
        for i, block in enumerate(blocks):
            exec(compile(block, f"{page} python block {i + 1}", "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    accuracy = float(re.search(r"accuracy without task id: ([0-9.]+)", capsys.readouterr().out).group(1))
    assert accuracy > 0.8  # the first example learns the digits, without task ids
    assert (tmp_path / "digits.rerelrp").is_file()
