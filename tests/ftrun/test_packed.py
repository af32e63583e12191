"""Packed trials (ftrun.packed): K LoRA runs over one frozen base equal the same runs trained alone;
a diverging run stops alone; incompatible runs are refused with the reason."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from conftest import compose_cfg

from ftrun.config import ConfigError
from ftrun.packed import compatible, train_packed
from ftrun.packed.train import prepare_runs
from ftrun.train import run

# small enough for a few seconds per run on one core: 16 examples, 4 per batch, 50 steps = 12.5 epochs
# (every epoch reshuffled by the run's own data seed), evaluated at steps 25 and 50 on 8 examples
# a pack trains padded rows, so its alone runs do too (data.padding_free=false): with dropout, a padding-free
# alone run draws its masks over the flattened row's shape instead, another valid run but not the same bits
SMALL = ["data.num_train=16", "data.num_eval=8", "batch_size=4", "max_steps=50", "train.logging_steps=5",
         "train.eval_steps=25", "train.save_steps=0", "train.eval_batch_size=8", "tracking.enabled=false",
         "data.padding_free=false"]
RUNS = {  # name: overrides; r8short leaves the pack at step 30, while the other rank-8 run shares its bmm;
    # r64 and r8short use LoRA dropout (their masks come from their own generators, equal to the alone run's)
    "r8": ["rank=8", "alpha=16", "lr=1e-3", "seed=1"],
    "r64": ["rank=64", "alpha=32", "lr=3e-4", "seed=2", "scheduler=linear", "optimizer.weight_decay=0.01",
            "method.dropout=0.1"],
    "r8short": ["rank=8", "alpha=8", "lr=2e-3", "seed=3", "max_steps=30", "train.eval_steps=15",
                "method.dropout=0.05"],
}


def cfg_of(name, extra=()):
    return compose_cfg([*SMALL, *RUNS[name], f"name={name}", *extra])


def read(run_dir):
    result = json.loads((run_dir / "result.json").read_text())
    state = json.loads((run_dir / "trainer_state.json").read_text())
    result["tokens_seen"] = state["num_input_tokens_seen"]
    return result, state["log_history"]


@pytest.fixture(scope="module")
def alone_and_packed(tmp_path_factory, tiny_dir):
    tmp = tmp_path_factory.mktemp("packed")
    for name in RUNS:
        run(cfg_of(name), tmp / "alone" / name)
    objectives = train_packed([cfg_of(n) for n in RUNS], [tmp / "packed" / n for n in RUNS])
    return tmp, objectives


@pytest.mark.parametrize("name", list(RUNS))
def test_a_packed_run_equals_the_same_run_alone(alone_and_packed, name):
    tmp, objectives = alone_and_packed
    alone, alone_hist = read(tmp / "alone" / name)
    packed, packed_hist = read(tmp / "packed" / name)
    assert packed["status"] == "finished" and packed["global_step"] == alone["global_step"]
    assert packed["eval_loss"] == pytest.approx(alone["eval_loss"], rel=1e-5)
    assert objectives[list(RUNS).index(name)] == pytest.approx(alone["objective"], rel=1e-5)
    assert packed["eval_exact_match"] == alone["eval_exact_match"]
    assert packed["tokens_seen"] == alone["tokens_seen"]  # the same batches
    for key in ("loss", "eval_loss", "learning_rate", "grad_norm"):
        a = [(h["step"], h[key]) for h in alone_hist if key in h]
        p = [(h["step"], h[key]) for h in packed_hist if key in h]
        assert [s for s, _ in p] == [s for s, _ in a], key
        torch.testing.assert_close(torch.tensor([v for _, v in p]), torch.tensor([v for _, v in a]),
                                   rtol=1e-5, atol=1e-7, msg=key)
    # the same keys a normal run's result.json has (phases differ: a packed run has no setup of its own)
    assert set(alone) - set(packed) <= {"phases_s", "peak_memory_breakdown_mb"}
    from safetensors.torch import load_file

    wa = load_file(str(tmp / "alone" / name / "model" / "adapter_model.safetensors"))
    wp = load_file(str(tmp / "packed" / name / "model" / "adapter_model.safetensors"))
    assert wa.keys() == wp.keys()
    # Adam moves a weight whose gradient is ~0 by up to lr a step in either direction, so fp32 summation-order
    # noise (the pack's bmm against the run's plain matmul, summed in an order that differs between CPUs: an AMD
    # EPYC moved one element of r8short by 4.6e-6) shows there; the trained weights move by ~lr x steps (>= 1e-2)
    for k in wa:
        torch.testing.assert_close(wp[k], wa[k], rtol=1e-4, atol=1e-5)
    cfg_a = json.dumps(sorted((tmp / "alone" / name / "config_resolved.yaml").read_text().splitlines()))
    assert cfg_a == json.dumps(sorted((tmp / "packed" / name / "config_resolved.yaml").read_text().splitlines()))


def test_a_diverging_run_stops_alone_and_the_others_go_on(alone_and_packed):
    tmp, _ = alone_and_packed
    bad = cfg_of("r64", ["lr=1e6", "name=absurd", "optimizer.max_grad_norm=0", "max_steps=20"])
    pruned = cfg_of("r8short", ["name=pruned", "seed=4"])
    seen, ended = [], []

    def prune_run_2(index, run, metrics):  # a sweep's pruner stopping one run at its first evaluation
        seen.append((index, run.global_step))
        return index == 2

    train_packed([cfg_of("r8short"), bad, pruned], [tmp / "nan" / n for n in ("r8short", "absurd", "pruned")],
                 on_evaluate=prune_run_2, on_end=lambda index, run: ended.append((index, run.status)))
    assert (2, 15) in seen and (0, 30) in seen and not any(i == 1 for i, _ in seen)
    assert sorted(ended) == [(0, "finished"), (1, "diverged"), (2, "pruned")]
    assert [i for i, _ in ended][-1] == 0  # the runs leave the pack as they end, the finished one last
    stopped, _ = read(tmp / "nan" / "pruned")
    assert stopped["pruned"] is True and stopped["global_step"] == 15 and stopped["objective"] is not None
    result, _ = read(tmp / "nan" / "absurd")
    assert result["status"] == "diverged" and result["objective"] is None
    assert result["diverged_at_step"] < 20 and "step" in result["reason"]
    good, _ = read(tmp / "nan" / "r8short")
    alone, _ = read(tmp / "alone" / "r8short")
    assert good["status"] == "finished" and good["global_step"] == 30
    assert good["eval_loss"] == pytest.approx(alone["eval_loss"], rel=1e-5)


def test_a_run_paused_in_a_pack_resumes_alone_and_ends_as_if_trained_straight_through(alone_and_packed, caplog):
    """hydra.sweeper.pruner=promotion in a pack: the paused run leaves it with a Trainer checkpoint; resumed alone
    (resume=auto, as the sweeper promotes it) it ends where the same run trained straight through alone ends."""
    tmp, _ = alone_and_packed
    ended = []

    def pause_r64(index, run, metrics):  # the promotion rule pausing r64 at its first rung (step 25 of 50)
        if index == 1:
            run.paused_at = run.global_step * 4
            return "paused"
        return False

    dirs = [tmp / "pause" / n for n in RUNS]
    train_packed([cfg_of(n) for n in RUNS], dirs, on_evaluate=pause_r64,
                 on_end=lambda index, run: ended.append((index, run.status)))
    assert sorted(ended) == [(0, "finished"), (1, "paused"), (2, "finished")]
    paused = json.loads((dirs[1] / "result.json").read_text())
    assert paused["status"] == "paused" and paused["paused_at"] == 100 and paused["paused_at_step"] == 25
    assert paused["objective"] is None
    ckpt = dirs[1] / "checkpoint-25"
    assert {"adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth",
            "trainer_state.json"} <= {p.name for p in ckpt.iterdir()}
    assert not (dirs[1] / "model").exists()  # a paused run has no final model yet
    # the others in the pack were not disturbed by it leaving
    other, _ = read(dirs[0])
    alone0, _ = read(tmp / "alone" / "r8")
    assert other["eval_loss"] == pytest.approx(alone0["eval_loss"], rel=1e-5)

    caplog.set_level(logging.INFO, logger="ftrun.fit")
    run(cfg_of("r64", ["resume=auto"]), dirs[1])  # what the sweeper's promotion does, in a warm worker
    assert f"Resuming from {ckpt}" in caplog.text  # from the pack's checkpoint, not from the start
    resumed, history = read(dirs[1])
    alone, alone_hist = read(tmp / "alone" / "r64")
    assert resumed["status"] == "finished" and resumed["global_step"] == alone["global_step"] == 50
    assert resumed["eval_loss"] == pytest.approx(alone["eval_loss"], rel=1e-5)
    assert resumed["tokens_seen"] == alone["tokens_seen"]  # the same batches after the pause as before it
    losses = [(h["step"], h["loss"]) for h in history if "loss" in h]
    assert [s for s, _ in losses] == [h["step"] for h in alone_hist if "loss" in h]  # the paused segment's too
    torch.testing.assert_close(torch.tensor([v for _, v in losses]),
                               torch.tensor([h["loss"] for h in alone_hist if "loss" in h]), rtol=1e-5, atol=1e-7)


def test_a_run_joining_a_running_pack_equals_its_alone_run(alone_and_packed):
    """r8short leaves the pack at step 30; r8 joins r64 there (as a sweep's next trial takes the freed place) and
    trains its 50 steps as it does alone, while r64 goes on undisturbed; r8short's adapter is freed."""
    tmp, _ = alone_and_packed
    queue, started, ended = [], [], []

    def on_end(index, run):
        ended.append((index, run.status, run.global_step))
        if run.cfg.name == "r8short":
            queue.append((cfg_of("r8"), tmp / "join" / "r8"))

    def on_start(index, run):
        started.append((index, run.cfg.name, sorted(run.trainer.model.peft_config), run.global_step))

    def admit():
        joining = list(queue)
        queue.clear()
        return joining

    objectives = train_packed([cfg_of("r8short"), cfg_of("r64")], [tmp / "join" / "r8short", tmp / "join" / "r64"],
                              on_start=on_start, on_end=on_end, admit=admit)
    assert ended[0] == (0, "finished", 30) and sorted(ended[1:]) == [(1, "finished", 50), (2, "finished", 50)]
    assert started[2] == (2, "r8", ["run1", "run2"], 0)  # joined with r64 at its step 30; r8short's adapter gone
    assert len(objectives) == 3
    for name in ("r8", "r64"):
        alone, alone_hist = read(tmp / "alone" / name)
        joined, hist = read(tmp / "join" / name)
        assert joined["global_step"] == 50 and joined["tokens_seen"] == alone["tokens_seen"], name
        assert joined["eval_loss"] == pytest.approx(alone["eval_loss"], rel=1e-5), name
        for key in ("loss", "eval_loss", "grad_norm"):
            a = [(h["step"], h[key]) for h in alone_hist if key in h]
            p = [(h["step"], h[key]) for h in hist if key in h]
            assert [s for s, _ in p] == [s for s, _ in a], (name, key)
            torch.testing.assert_close(torch.tensor([v for _, v in p]), torch.tensor([v for _, v in a]),
                                       rtol=1e-5, atol=1e-7, msg=f"{name} {key}")
    assert objectives[2] == pytest.approx(read(tmp / "alone" / "r8")[0]["objective"], rel=1e-5)


def test_a_run_that_cannot_join_the_pack_is_refused_before_the_next_step(alone_and_packed):
    tmp, _ = alone_and_packed
    offered = [[(cfg_of("r8", ["batch_size=8"]), tmp / "refused" / "r8")]]
    with pytest.raises(ConfigError, match="micro-batch size differs"):
        train_packed([cfg_of("r8short")], [tmp / "refused" / "r8short"], admit=lambda: offered.pop() if offered else [])
    assert not (tmp / "refused" / "r8").exists()


@pytest.mark.parametrize("other, words", [
    (["batch_size=8"], "micro-batch size differs"),
    (["data.cutoff_len=64"], "data"),
    (["precision=bf16"], "precision differs"),
    (["method=full"], "method=lora"),
    (["data.packing=true"], "data.packing=false"),
])
def test_incompatible_runs_are_refused_with_the_reason(other, words):
    a = compose_cfg(["rank=8", "name=a"])
    b = compose_cfg(["rank=64", "name=b", *other])
    reason = compatible([a, b])
    assert reason is not None and words in reason, reason


def test_runs_differing_in_what_each_trial_owns_are_compatible(tmp_path):
    a = compose_cfg(["rank=8", "lr=1e-3", "seed=1", "name=a"])
    b = compose_cfg(["rank=64", "alpha=8", "lr=1e-4", "seed=2", "method.dropout=0.1", "max_steps=7",
                     "scheduler=linear", "name=b"])
    assert compatible([a, b]) is None
    assert compatible([a, a]) is None  # a sweep's trials may share a name (lr and rank); each has its own dir
    with pytest.raises(ConfigError, match="same run directory"):
        prepare_runs([a, a], [tmp_path / "x", tmp_path / "x"])
