"""Check that committed results still reproduce: re-run the first seed of each results.json and compare.

For every ``results.json`` of mnist.py or medical.py under the folders given (default: docs/results), the command that wrote it is rebuilt
from its ``config`` (the script from the benchmark's name), run for the first seed and the methods named by
--methods (default: rerelrp; every method of a seed starts from the same seeded weights, so one method's numbers
do not depend on which others ran), into a temporary folder; the final task-agnostic and task-aware accuracy
of each method are compared with the committed ones, and rerelrp's bytes kept beyond the weights are printed beside
the committed ones (not compared: a new save format moves them without moving any answer). Run it before a
submission that changes the method.

    RERELRP_DATA=../shared/data python benchmarks/check_results.py
    python benchmarks/check_results.py docs/results/digits --tolerance 0.5
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: the benchmarks whose results.json hold accuracy matrices per method, which this script compares
STREAM_SCRIPTS = ("mnist.py", "medical.py")
#: config keys that say where and how to run, not what: set by this script, or left to the environment.
_NOT_REPLAYED = {"out", "no_progress", "data_root", "download", "device"}


def script_of(config: dict) -> str:
    """The benchmark script that wrote a results.json with this ``config`` (older files do not name it)."""
    if config.get("script"):
        return config["script"]
    if "variants" in config:
        return "growth.py"
    return "mnist.py" if "dataset" in config else "medical.py"


def command(config: dict, out: str, seeds: list[int] | None = None, methods: list[str] | None = None,
            shown: bool = False) -> list[str]:
    """The benchmark command that reproduces ``config`` (for ``seeds`` and ``methods`` when given, else the config's
    own), writing to ``out``: run by this interpreter by absolute path, or, ``shown``, as a reader types it in the
    repository root (``python benchmarks/<script>``)."""
    script = script_of(config)
    config = {**config, **({"seeds": seeds} if seeds is not None else {}),
              **({"methods": methods} if methods is not None else {})}
    start = ["python", f"benchmarks/{script}"] if shown else [sys.executable, str(ROOT / "benchmarks" / script)]
    args = [*start, "--out", out, "--no-progress"]
    for key, value in config.items():
        if key in _NOT_REPLAYED or key == "script" or value is None or value is False:
            continue
        if key == "backbone" and config.get("dataset") == "digits":
            continue  # mnist.py picks the digits MLP itself and refuses any --backbone for digits
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif isinstance(value, list):
            args += [flag, *map(str, value)]
        else:
            args += [flag, str(value)]
    if script in (*STREAM_SCRIPTS, "unknown.py") and "preset" not in config:  # measured before --preset: "tuned"
        args += ["--preset", "tuned"]
    return args


def command_line(config: dict) -> str:
    """The shell command, as a reader types it in the repository root, that wrote a results.json of ``config``."""
    return " ".join(command(config, config["out"], shown=True))


def run_of(results: list[dict], method: str, seed: int) -> dict:
    """The entry of ``method`` and ``seed`` in a results.json's ``results``."""
    (r,) = [r for r in results if r["method"] == method and r["seed"] == seed]
    return r


def final(results: list[dict], method: str, seed: int) -> tuple[float, float]:
    """Final average TAg and TAw accuracy (%) of ``method`` for ``seed``."""
    r = run_of(results, method, seed)
    return tuple(100 * sum(row) / len(row) for row in (r["tag"][-1], r["taw"][-1]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="*", default=["docs/results"], help="folders searched for results.json")
    p.add_argument("--methods", nargs="+", default=["rerelrp"], help="methods to re-run and compare")
    p.add_argument("--tolerance", type=float, default=0.0,
                   help="largest accepted difference, in points of accuracy (0: the same numbers, as the same "
                        "code, seeds and threads give on the same machine)")
    args = p.parse_args()
    files = sorted(f for folder in args.folders for f in Path(folder).rglob("results.json"))
    if not files:
        print(f"error: no results.json under {', '.join(args.folders)}", file=sys.stderr)
        return 2
    failed = 0
    for path in files:
        saved = json.loads(path.read_text())
        if saved["config"].get("script", "mnist.py") not in STREAM_SCRIPTS:
            print(f"{path}: written by {saved['config']['script']}, not a stream benchmark: skipped")
            continue
        seed = saved["config"]["seeds"][0]
        methods = [m for m in args.methods if m in saved["config"]["methods"]]
        with tempfile.TemporaryDirectory() as out:
            cmd = command(saved["config"], out, [seed], methods)
            print(f"{path}: {' '.join(cmd[1:])}", flush=True)
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                print(f"  FAILED to run (exit {done.returncode}): {done.stderr[-2000:]}")
                failed += 1
                continue
            fresh = json.loads((Path(out) / "results.json").read_text())["results"]
        for method in methods:
            old, new = final(saved["results"], method, seed), final(fresh, method, seed)
            ok = all(abs(a - b) <= args.tolerance for a, b in zip(old, new))
            failed += not ok
            kept = [run_of(r, method, seed).get("bytes_kept") for r in (saved["results"], fresh)]
            print(f"  {method} seed {seed}: TAg/TAw committed {old[0]:.2f} / {old[1]:.2f}, now {new[0]:.2f} / "
                  f"{new[1]:.2f}: {'ok' if ok else 'DIFFERS'}"
                  + (f"; kept beyond weights committed {kept[0] / 1024:.1f} KiB, now {kept[1] / 1024:.1f} KiB"
                     if None not in kept else ""))
    print(f"{len(files)} results checked, {failed} differ or failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
