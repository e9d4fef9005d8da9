"""rerelrp as an Avalanche strategy, driven by Avalanche's own benchmark generator, metrics, evaluator and logger on
scikit-learn's digits; examples/avalanche_split_mnist.py run as printed in docs/howto/avalanche.md (digits here, MNIST in CI)."""
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("avalanche", reason="the avalanche extra (in 'dev') provides Avalanche")

from avalanche.evaluation.metrics import accuracy_metrics, confusion_matrix_metrics, forgetting_metrics  # noqa: E402
from avalanche.training.plugins import EvaluationPlugin  # noqa: E402

from rerelrp.avalanche import ReReLRPStrategy  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
import avalanche_split_mnist as example  # noqa: E402


def strategy(evaluator, **options):
    torch.manual_seed(0)
    model = example.network("digits")
    return ReReLRPStrategy(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
                           criterion=nn.CrossEntropyLoss(), train_mb_size=32, train_epochs=5, eval_mb_size=256,
                           evaluator=evaluator, n_tasks=5, progress=False, **options)


@pytest.fixture(scope="module")
def trained():
    benchmark = example.split_digits(0)
    evaluator = EvaluationPlugin(accuracy_metrics(experience=True, stream=True),
                                 forgetting_metrics(experience=True, stream=True),
                                 confusion_matrix_metrics(num_classes=10, stream=True), loggers=[])
    ours = strategy(evaluator)
    history = []
    for experience in benchmark.train_stream:
        ours.train(experience, eval_streams=[])
        history.append(ours.eval(benchmark.test_stream))
    return ours, benchmark, history


def test_avalanche_metrics_without_task_labels_equal_the_learners_own_answers(trained):
    ours, benchmark, history = trained
    x = torch.stack([item[0] for exp in benchmark.test_stream for item in exp.dataset])
    y = torch.tensor([int(item[1]) for exp in benchmark.test_stream for item in exp.dataset])
    accuracy = float((ours.learner.predict(x) == y).float().mean())
    final = history[-1]
    assert final["Top1_Acc_Stream/eval_phase/test_stream/Task000"] == pytest.approx(accuracy, abs=1e-6)
    assert accuracy > 0.8
    confusion = final["ConfusionMatrix_Stream/eval_phase/test_stream"].best_supported_value(torch.Tensor)
    assert confusion.shape == (10, 10) and int(confusion.sum()) == len(y)
    assert len(ours.learner.tasks_) == 5 and ours.learner.tasks_[0] == [0, 1]


def test_scores_argmax_is_predict_and_pickling_points_at_save(trained, tmp_path):
    ours, benchmark, _ = trained
    x = torch.stack([item[0] for item in benchmark.test_stream[0].dataset])
    assert torch.equal(ours.scores(x).argmax(1), ours.learner.predict(x))
    with pytest.raises(TypeError, match="strategy.save"):
        pickle.dumps(ours)
    path = ours.save(tmp_path / "strategy.zip")
    model = example.network("digits")
    again = ReReLRPStrategy.load(path, model=model, optimizer=torch.optim.Adam(model.parameters()),
                                 evaluator=EvaluationPlugin(loggers=[]))
    assert torch.equal(again.scores(x), ours.scores(x))


@pytest.mark.slow
def test_the_example_runs_as_printed_in_the_readme():
    # the how-to's --dataset digits line (the MNIST line takes minutes: its figures are in the how-to)
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "avalanche_split_mnist.py"), "--dataset", "digits",
                           "--epochs", "5"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("rerelrp", "naive", "replay"):
        assert f"| {name} |" in done.stdout
