"""One compute account: summary.md, the HTML report and the board's sweep tab give the same trial-seconds."""

from __future__ import annotations

import re

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

# (state, value, trial-seconds as the sweeper timed them, extra user attributes)
TRIALS = [(TrialState.COMPLETE, 0.5, 30.0, {}), (TrialState.COMPLETE, 0.4, 50.0, {}),
          (TrialState.PRUNED, None, 12.0, {"pruned": True}), (TrialState.FAIL, None, 7.0, {"fail_reason": "boom"}),
          (TrialState.COMPLETE, 0.5, 0.0, {"duplicate_of": 0})]  # a repeat, answered without training
SPENT = 30.0 + 50.0 + 12.0 + 7.0


@pytest.fixture()
def study(tmp_path):
    study = optuna.create_study(study_name="acct", storage=f"sqlite:///{tmp_path / 'study.db'}")
    for i, (state, value, seconds, attrs) in enumerate(TRIALS):
        # Optuna's own start-to-end times are all ~0 here: only the sweeper's duration_s says what was spent
        study.add_trial(create_trial(state=state, value=value, params={"lr": 10 ** -(i + 2)},
                                     distributions={"lr": FloatDistribution(1e-6, 1.0, log=True)},
                                     user_attrs={"duration_s": seconds, **attrs},
                                     intermediate_values={1: 0.9} if state == TrialState.PRUNED else None))
    return study


def test_summary_report_and_board_agree_on_the_compute_spent(study, tmp_path):
    from analysis.sweep import report
    from ftrun.board.jobs import read_trials
    from sweeper.summary import build_summary

    summary = build_summary(study, ["loss"], ["python", "-m", "ftrun"])
    assert summary["compute"]["trial_seconds"] == pytest.approx(SPENT) and summary["compute"]["trials"] == 4
    assert f"Spent {SPENT:.0f} trial-seconds on 4 trials" in "\n".join(summary["lines"])

    page = report(study, tmp_path / "report", c=None, log_to_mlflow=False).read_text()
    total = re.search(r"<tr><td>total</td><td>(\d+)</td><td>([\d.]+)</td></tr>", page)
    assert total is not None and float(total.group(2)) == pytest.approx(SPENT, abs=0.05)
    assert f"Spent {SPENT:.0f} trial-seconds on 4 trials" in page
    assert "<td>repeated</td><td>1</td><td>0.0</td>" in page

    _, line, _ = read_trials("acct", f"sqlite:///{tmp_path / 'study.db'}")
    assert f"Spent {SPENT:.0f} trial-seconds on 4 trials" in line


def test_the_account_states_the_share_spent_in_rung_decay_branches(tmp_path):
    """Trials that ran rung branches (hydra.sweeper.rung_branch) report their seconds; the account sums them."""
    from ftrun.contract import ATTR_BRANCH_S
    from sweeper.compute import compute_account, compute_text

    study = optuna.create_study(study_name="branches", storage=f"sqlite:///{tmp_path / 'study.db'}")
    for seconds, branch_s in ((40.0, 6.0), (20.0, 4.0), (30.0, None)):
        attrs = {"duration_s": seconds, **({ATTR_BRANCH_S: branch_s} if branch_s is not None else {})}
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.5, user_attrs=attrs))
    compute = compute_account(study.get_trials())
    assert compute.branch_s == pytest.approx(10.0) and compute.used_s == pytest.approx(90.0)
    assert "(10.0 trial-seconds of them, 11%, in rung decay branches)" in compute_text(compute, {})
    assert "branches" not in compute_text(compute_account(study.get_trials()[2:]), {})
