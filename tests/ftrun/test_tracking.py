"""ftrun.tracking: the experiment every run and sweep host logs into."""

from ftrun.tracking import experiment_id


def test_the_host_that_loses_the_create_race_reads_the_winners_experiment(tmp_path, monkeypatch):
    # Two sweep hosts (a SLURM array) look the experiment up at once, find none, and both create it: the tracking
    # store refuses the second create (RESOURCE_ALREADY_EXISTS), which must not end that host's sweep.
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    winner = MlflowClient(tracking_uri=uri).create_experiment("race")
    loser = MlflowClient(tracking_uri=uri)
    looked = []
    real_lookup = loser.get_experiment_by_name

    def lookup_before_the_winner_commits(name):  # the first lookup ran before the winner's create
        looked.append(name)
        return None if len(looked) == 1 else real_lookup(name)

    monkeypatch.setattr(loser, "get_experiment_by_name", lookup_before_the_winner_commits)
    assert experiment_id(loser, "race") == winner
    assert looked == ["race", "race"]
    assert [e.name for e in MlflowClient(tracking_uri=uri).search_experiments()].count("race") == 1


def test_a_missing_experiment_is_created_once(tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    first = experiment_id(client, "new")
    assert experiment_id(client, "new") == first == client.get_experiment_by_name("new").experiment_id
