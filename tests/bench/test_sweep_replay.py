"""bench/sweep_replay.py's accounting on a made-up grid: a repeated configuration costs nothing, the budget stops
new trials (a started one counts), and the replay follows the sampler the sweeper builds. No trial runs."""

from __future__ import annotations

import pytest

from tests.bench.bench_module import bench_module

replay = bench_module("sweep_replay")
LRS, RANKS, BATCHES = [1e-4, 3e-4, 1e-3, 2e-3, 4e-3, 8e-3], [4, 16, 64], [8, 16]


def made_up_grid(best_at=(4e-3, 64, 8)):
    """Every configuration 10 trial-seconds and 4 steps, evaluated at steps 1-4; loss 2.0 everywhere but 1.0 at
    ``best_at``; the first evaluation is 3.0 for lr 1e-4 and 2.5 for every other configuration."""
    def rec(key):
        value = 1.0 if key == best_at else 2.0
        first = 3.0 if key[0] == 1e-4 else 2.5
        return {"value": value, "seconds": 10.0, "steps": 4, "curve": [[1, first], [2, value], [3, value], [4, value]]}
    return {(lr, r, b): rec((lr, r, b)) for lr in LRS for r in RANKS for b in BATCHES}


def test_a_grid_in_the_records_format_reads_back_as_loss_and_seconds():
    task = {"grid": [{"records": [{"params": {"lr": 1e-4, "rank": 4, "batch_size": 8}, "state": "COMPLETE",
                                   "value": 2.5, "seconds": 12.0},
                                  {"params": {"lr": 3e-4, "rank": 4, "batch_size": 8}, "state": "FAIL",
                                   "value": None, "seconds": 1.0}]}]}
    assert replay.grid_of(task) == {(1e-4, 4, 8): {"value": 2.5, "seconds": 12.0, "curve": None, "steps": None}}


def test_the_sweep_runs_until_it_finds_the_best_and_counts_only_new_configurations():
    grid = made_up_grid()
    run = replay.replay({"name": "random"}, 0, grid, budget=70.0, best=1.0)
    assert run["reached_s"] == 10.0 * run["trials"]  # repeats were free: each distinct configuration cost 10 s
    assert run["within_budget"] == (run["reached_s"] <= 70.0)  # it finished before 70 s were spent
    assert run["best_in_budget"] == (1.0 if run["within_budget"] else 2.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_budget_too_small_for_one_trial_counts_nothing(seed):
    """A trial counts when it finished within the budget (as bench/sweep_efficiency.py counts a real sweep), not
    when it merely started on it."""
    run = replay.replay({"name": "tpe", "n_startup_trials": 4}, seed, made_up_grid(), budget=5.0, best=1.0)
    assert run["best_in_budget"] is None and not run["within_budget"]
    assert run["reached_s"] is not None  # it got there later, past the budget


def test_an_unreachable_best_exhausts_the_grid():
    run = replay.replay({"name": "random"}, 0, made_up_grid(), budget=1e9, best=0.5)
    assert run["reached_s"] is None and run["trials"] == 36 and run["best_in_budget"] == 1.0


def test_a_pruned_trial_reports_its_curve_and_is_charged_the_steps_it_trained():
    """Median pruning from the 5th trial: a configuration with lr 1e-4 is worse than every other at the first
    evaluation (step 1 of 4), so from then on it stops there and costs a quarter of its 10 s."""
    import optuna

    grid = made_up_grid()
    pruner = replay.PRUNERS["median"](8)
    seen = []
    real_report = optuna.trial.Trial.report

    def recorded(self, value, step):
        seen.append(step)
        return real_report(self, value, step)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(optuna.trial.Trial, "report", recorded)
        run = replay.replay({"name": "random"}, 3, grid, budget=1e9, best=1.0, pruner=pruner, every=8)
    # examples seen at steps 1-3 of batch 8 and 16; never at the last step (4 x 16 = 64)
    assert set(seen) <= {8, 16, 24, 32, 48} and 64 not in seen
    full = run["trials"] - run["pruned"]
    assert run["reached_s"] == pytest.approx(10.0 * full + 2.5 * run["pruned"])
    assert run["pruned"] > 0


def test_pause_and_promote_resumes_a_paused_trial_where_it_paused_and_charges_each_step_once():
    """Under pause and promote (sweeper.promotion) a trial that pauses at a rung is resumed later by the rule and
    reports on from its next evaluation, never from the start again; a trial is charged at most its 10 s."""
    import optuna

    reports = []
    real_report = optuna.trial.Trial.report

    def recorded(self, value, step):
        reports.append((self.number, step))
        return real_report(self, value, step)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(optuna.trial.Trial, "report", recorded)
        run = replay.replay({"name": "random"}, 0, made_up_grid(), budget=1e9, best=1.0,
                            pruner=replay.PRUNERS["promotion"](8), every=8)
    assert run["reached_s"] is not None and run["pruned"] > 0  # found the best; some trials paused on the way
    by_trial = {}
    for i, (number, step) in enumerate(reports):
        by_trial.setdefault(number, []).append((i, step))
    for seq in by_trial.values():
        steps = [s for _, s in seq]
        assert steps == sorted(set(steps))  # on from where it paused, nothing reported twice
    resumed = [n for n, seq in by_trial.items() if seq[-1][0] - seq[0][0] + 1 > len(seq)]
    assert resumed  # a trial's reports were interleaved with others': it paused, and was promoted later
    assert run["reached_s"] <= 10.0 * run["trials"] + 1e-9


def test_judged_by_the_mean_a_sweep_spends_its_budget_and_reports_its_best_configuration(tmp_path, capsys):
    """The grid as one training seed saw it has its best at (4e-3, 64, 8); over the seeds, (2e-3, 16, 8) is the
    best by far. A sweep that found only the former is judged by that configuration's mean: 20% off."""
    grid = made_up_grid()
    run = replay.replay({"name": "random"}, 0, grid, budget=360.0, best=float("-inf"), budget_only=True)
    assert run["reached_s"] is None and run["trials"] == 36  # never 'reached': the whole grid fits the budget
    assert tuple(run["best_key"]) == (4e-3, 64, 8) and run["best_in_budget"] == 1.0
    means = {f"lr={k[0]:g} rank={k[1]} batch_size={k[2]}": 1.5 for k in grid}
    means["lr=0.004 rank=64 batch_size=8"], means["lr=0.002 rank=16 batch_size=8"] = 1.2, 1.0
    seed_noise = {"tasks": {"letters": {"values": {"42": means, "0": means}, "analysis": {"seeds": [0, 42]}}}}
    tasks = {"letters": {"grid": [{"name": "grid", "records": [
        {"params": {"lr": k[0], "rank": k[1], "batch_size": k[2]}, "state": "COMPLETE", "value": r["value"],
         "seconds": r["seconds"], "curve": r["curve"], "global_step": r["steps"]} for k, r in grid.items()]}]}}
    args = type("Args", (), {"budget_share": 1.0, "seeds": 2, "first_seed": 0, "publish": False})()
    replay.judge_by_mean(tasks, {"random": ({"name": "random"}, None)}, seed_noise, args)
    assert "picked within 1% of the best mean:   0/2; median gap 20.0%" in capsys.readouterr().out
