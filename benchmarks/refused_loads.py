"""Refused loads: how much memory ``rerelrp.load`` takes before it refuses a save whose description lies.

A learner of two digits tasks (MLP 64-128-128-10, grown) is saved; each case below rewrites its ``meta.json`` (a
few KB of text) to declare something the tensors do not hold. Each load runs in a fresh process, which prints the
growth of its peak resident memory across the load (Linux: the peak, ``VmHWM``, is reset through
``/proc/self/clear_refs`` just before it); the script prints it beside the bytes
the file's tensors declare and the refusal. The promise: no refused load allocates more than about twice the
declared tensor bytes: each process loads the intact save once first (imports, first-call caches), then the case.

    python benchmarks/refused_loads.py --out results/refused-loads
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.cli import HelpFormatter  # noqa: E402
from rerelrp import ReReLRP  # noqa: E402
from rerelrp.datasets import load_digits, task_indices  # noqa: E402


def _widths(n: int) -> Callable[[dict], None]:
    def change(meta: dict) -> None:
        meta["widths"]["0"] = n
        meta["growth"][-1][0] += n - meta["initial_sizes"][0] - sum(g[0] for g in meta["growth"])
    return change


#: (name, change of meta.json); "intact" is the baseline every other case is compared with.
CASES: list[tuple[str, Callable[[dict], None]]] = [
    ("intact", lambda meta: None),
    ("widths 200,000", _widths(200_000)),
    ("widths 1e11", _widths(10 ** 11)),
    ("initial_sizes 2,000", lambda meta: meta.update(initial_sizes=[2000, 2000])),
    ("architecture 200,000 rows", lambda meta: meta["architecture"][0][1].__setitem__(0, 200_000)),
    ("input_shape 10^6 x 10^6", lambda meta: meta.update(input_shape=[10 ** 6, 10 ** 6])),
]

CHILD = textwrap.dedent("""
    import sys, json, torch
    from torch import nn
    sys.path.insert(0, {root!r})
    import rerelrp
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 96), nn.ReLU(), nn.Linear(96, 10))
    def kib(field):
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith(field))
    rerelrp.load({intact!r}, nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 96), nn.ReLU(),
                                           nn.Linear(96, 10)))  # imports and first-call caches, before measuring
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # the peak (VmHWM) starts again from the memory in use now
    before = kib("VmRSS:")
    try:
        rerelrp.load({path!r}, model)
        outcome = "loaded"
    except Exception as error:
        outcome = type(error).__name__ + ": " + str(error).replace({path!r}, "the file")
    print(json.dumps({{"peak_growth_bytes": (kib("VmHWM:") - before) * 1024, "outcome": outcome}}))
""")


def declared_tensor_bytes(path: Path) -> int:
    """Bytes of the tensors that ``tensors.safetensors`` of the save at ``path`` declares in its header."""
    with zipfile.ZipFile(path) as archive:
        data = archive.read("tensors.safetensors")
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    return sum(end - start for key, entry in header.items() if key != "__metadata__"
               for start, end in [entry["data_offsets"]])


def rewritten(path: Path, out: Path, meta_change: Callable[[dict], None] | None = None,
              tensor_change: Callable[[dict], None] | None = None) -> Path:
    """A copy of the save at ``path`` with ``meta_change(meta)`` / ``tensor_change(tensors)`` applied in place to its
    meta.json / tensors.safetensors."""
    from safetensors.torch import load as load_tensors, save as save_tensors

    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "meta.json" and meta_change:
                meta = json.loads(data)
                meta_change(meta)
                data = json.dumps(meta).encode()
            if name == "tensors.safetensors" and tensor_change:
                tensors = load_tensors(data)
                tensor_change(tensors)
                data = save_tensors(tensors)
            dst.writestr(name, data)
    return out


def saved_learner(folder: Path) -> Path:
    """A learner of two digits tasks that grew, saved under ``folder``."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 96), nn.ReLU(), nn.Linear(96, 10))
    learner = ReReLRP(model, epochs=2, grow=0.9, random_state=0, progress=False)
    x, y, _, _ = load_digits()
    for indices in task_indices(y, [[0, 1], [2, 3]]):
        learner.fit_task(DataLoader(TensorDataset(x[indices], y[indices]), batch_size=32, shuffle=True,
                                    generator=torch.Generator().manual_seed(0)))
    return learner.save(folder / "learner.zip")


def command_line(argv: Sequence[str] | None = None) -> int:
    cli = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    cli.add_argument("--out", default=None, help="folder for results.json and results.md (default: print only)")
    args = cli.parse_args(argv)
    root = str(Path(__file__).resolve().parent.parent)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        save = saved_learner(Path(folder))
        for name, change in CASES:
            path = rewritten(save, Path(folder) / "case.zip", change)
            child = subprocess.run([sys.executable, "-c", CHILD.format(root=root, path=str(path), intact=str(save))],
                                   capture_output=True, text=True, check=True)
            row = {"case": name, "file_bytes": path.stat().st_size, "declared_tensor_bytes": declared_tensor_bytes(path),
                   **json.loads(child.stdout.strip().splitlines()[-1])}
            rows.append(row)
            print(f"{name:28s} file {row['file_bytes'] / 1024:7.1f} KiB  tensors {row['declared_tensor_bytes'] / 1024:7.1f}"
                  f" KiB  peak growth {row['peak_growth_bytes'] / 2 ** 20:7.2f} MiB  {row['outcome'][-90:]}", flush=True)
    baseline = rows[0]["peak_growth_bytes"]
    worst = max(r["peak_growth_bytes"] for r in rows[1:])
    print(f"worst refused load: {worst / 2 ** 20:.2f} MiB of peak growth; the intact load: {baseline / 2 ** 20:.2f} "
          f"MiB; declared tensors {rows[0]['declared_tensor_bytes'] / 2 ** 20:.2f} MiB")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps({"command": "python benchmarks/refused_loads.py "
                                                      + " ".join(argv if argv is not None else sys.argv[1:]),
                                                      "rows": rows}, indent=1))
        lines = ["| case | file KiB | declared tensors KiB | peak memory growth MiB | outcome |", "|---|---|---|---|---|"]
        lines += [f"| {r['case']} | {r['file_bytes'] / 1024:.1f} | {r['declared_tensor_bytes'] / 1024:.1f} | "
                  f"{r['peak_growth_bytes'] / 2 ** 20:.2f} | {r['outcome'].replace('|', '/')} |" for r in rows]
        (out / "results.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(command_line())
