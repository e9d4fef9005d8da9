"""Threads: one learner answered from several threads, a learner training beside other optimizers, first tasks
of two learners at once. Real data: scikit-learn's 8x8 digits."""
import os
import signal
import sys
import threading
import time

import pytest
import torch
from torch import nn

from rerelrp import ReReLRP
from rerelrp.concurrency import model_lock
from conftest import digits_mlp, loader


TIMEOUT_S = 180  # all jobs together; each takes seconds: a thread still running then is hung


def run_in_threads(*jobs, stop: threading.Event | None = None, timeout_s: float = TIMEOUT_S):
    """Run each job in its own thread; fail naming the jobs still running after ``timeout_s`` (a hung thread
    fails the test instead of hanging it) and any error a job raised. ``stop`` is set before the check, so that a
    job looping until it is set ends even when another hangs."""
    errors, threads = [], []

    def guarded(job):
        try:
            job()
        except BaseException as error:  # reported to the test below
            errors.append(error)

    for job in jobs:
        threads.append(threading.Thread(target=guarded, args=(job,), daemon=True))  # a hung one cannot block exit
        threads[-1].start()
    deadline = time.monotonic() + timeout_s
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    if stop is not None:
        stop.set()
    for job, thread in zip(jobs, threads):
        assert not thread.is_alive(), f"{job} still runs after {timeout_s} s: hung"
    assert not errors, errors


def test_a_hung_thread_fails_the_test_instead_of_hanging_it():
    release = threading.Event()
    try:
        with pytest.raises(AssertionError, match="still runs after 0.2 s: hung"):
            run_in_threads(lambda: None, lambda: release.wait(60), timeout_s=0.2)
    finally:
        release.set()
    with pytest.raises(AssertionError, match="ZeroDivisionError"):
        run_in_threads(lambda: 1 / 0)


def test_predictions_from_several_threads_equal_the_serial_ones(digits, default_learner):
    _, test = digits
    x = torch.cat([x for x, _ in test])
    expected = {"predict": default_learner.predict(x), "task": default_learner.predict_task(x),
                "score": default_learner.score_samples(x)}
    answers = []

    def ask():
        for _ in range(5):
            answers.append(("predict", default_learner.predict(x)))
            answers.append(("task", default_learner.predict_task(x)))
            answers.append(("score", default_learner.score_samples(x)))

    run_in_threads(*[ask] * 4)
    assert len(answers) == 60 and all(torch.equal(value, expected[kind]) for kind, value in answers)


def test_an_unrelated_optimizer_may_step_in_another_thread_while_a_learner_trains(digits):
    train, _ = digits
    learner = ReReLRP(digits_mlp(), epochs=3, progress=False)
    learner.fit_task(loader(*train[0]))
    other = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(other.parameters(), lr=0.1)
    stop = threading.Event()

    def step_elsewhere():
        while not stop.is_set():
            optimizer.zero_grad()
            other(torch.randn(8, 4)).sum().backward()
            optimizer.step()

    def learn():
        try:
            learner.fit_task(loader(*train[1]))
        finally:
            stop.set()

    run_in_threads(step_elsewhere, learn, stop=stop)
    assert len(learner.tasks_) == 2


def test_two_first_tasks_in_two_threads_leave_torch_working(digits):
    train, test = digits
    learners = [ReReLRP(digits_mlp(seed=s), epochs=2, progress=False) for s in (0, 1)]
    run_in_threads(*[lambda learner=learner: learner.fit_task(loader(*train[0])) for learner in learners])
    assert all(len(learner.tasks_) == 1 for learner in learners)
    assert nn.Linear(3, 2)(torch.ones(1, 3)).shape == (1, 2)  # torch.fx left nothing patched
    alone = ReReLRP(digits_mlp(seed=0), epochs=2, progress=False).fit_task(loader(*train[0]))
    assert torch.equal(learners[0].predict(test[0][0]), alone.predict(test[0][0]))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork exists on POSIX only")
def test_a_process_forked_while_another_thread_predicts_can_predict(digits):
    """The child of a fork runs only the forking thread: a model lock another thread held must not stay held in it
    (the child's predict waited for ever)."""
    x, y = digits[0][0]
    learner = ReReLRP(digits_mlp(), epochs=2, progress=False).fit_task(loader(x, y))
    held, release = threading.Event(), threading.Event()

    def predict_slowly():  # holds the model's lock as a predict in this thread would
        with model_lock(learner.model):
            held.set()
            release.wait(TIMEOUT_S)

    thread = threading.Thread(target=predict_slowly, daemon=True)
    thread.start()
    assert held.wait(TIMEOUT_S)
    pid = os.fork()
    if pid == 0:  # the child: one thread, its own exit code, nothing of pytest's teardown
        try:
            torch.set_num_threads(1)
            os._exit(0 if len(learner.predict(x)) == len(x) else 1)
        except BaseException:
            os._exit(2)
    release.set()
    thread.join(TIMEOUT_S)
    deadline = time.monotonic() + 60
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child's predict still waits after 60 s: a lock held by the parent's thread")
    assert os.waitstatus_to_exitcode(done[1]) == 0


def test_plain_forwards_of_other_modules_run_while_a_first_task_traces_its_model(digits):
    """torch.fx patches ``nn.Module.__call__`` for the whole process while it traces: another thread's forward of an
    unrelated module went through the tracer and raised ``NameError: module is not installed as a submodule``."""
    train, _ = digits
    other = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4))
    x = train[0][0][:32]
    expected = other(x)
    stop, steps = threading.Event(), []

    def forward_elsewhere():
        while not stop.is_set():
            assert torch.equal(other(x), expected)
            steps.append(1)

    def learn_three_first_tasks():
        try:
            for seed in range(3):  # each first task traces its model once
                ReReLRP(digits_mlp(seed=seed), epochs=1, progress=False).fit_task(loader(*train[0]))
        finally:
            stop.set()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # threads take turns often, as on a busy machine
    try:
        run_in_threads(forward_elsewhere, learn_three_first_tasks, stop=stop)
    finally:
        sys.setswitchinterval(interval)
    assert steps


def test_two_learners_train_tasks_at_once_while_an_unrelated_optimizer_steps(digits):
    """torch's optimizer step hooks live in one process-wide dict: a learner registering or removing its hooks
    while another thread's optimizer iterated over them raised ``OrderedDict mutated during iteration``."""
    train, _ = digits
    learners = [ReReLRP(digits_mlp(seed=s), epochs=1, progress=False) for s in (0, 1)]
    other = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(other.parameters(), lr=0.1)
    stop, done = threading.Event(), []

    def step_elsewhere():
        while not stop.is_set():
            optimizer.zero_grad()
            other(torch.randn(8, 4)).sum().backward()
            optimizer.step()

    def learn(learner):
        try:
            for task in range(3):
                learner.fit_task(loader(*train[task]))
        finally:
            done.append(learner)
            if len(done) == len(learners):
                stop.set()

    run_in_threads(step_elsewhere, *[lambda learner=learner: learn(learner) for learner in learners], stop=stop)
    assert all(len(learner.tasks_) == 3 for learner in learners)
