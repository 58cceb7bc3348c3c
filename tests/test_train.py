"""The training loop: exact resume, checkpoint checks, logs, schedules, DDP under torchrun."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from visualsearch.train import CheckpointMismatch, TrainConfig, identity_of, lr_at, train

sys.path.insert(0, str(Path(__file__).parent))
from train_toy import batch_fn, cfg, step_fn, toy_model  # noqa: E402


def test_resume_after_interruption_gives_identical_weights(tmp_path):
    straight = train(toy_model(), step_fn, batch_fn, cfg()).model.state_dict()

    calls = {"n": 0}

    def dying_step(model, batch):
        calls["n"] += 1
        if calls["n"] == 14:           # killed during step 14, after the checkpoint at step 10
            raise KeyboardInterrupt
        return step_fn(model, batch)

    with pytest.raises(KeyboardInterrupt):
        train(toy_model(), dying_step, batch_fn, cfg(), run_dir=tmp_path)
    assert (tmp_path / "checkpoint.pt").is_file()
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == 13  # completed steps kept
    resumed = train(toy_model(), step_fn, batch_fn, cfg(), run_dir=tmp_path)
    assert resumed.resumed_from == 13
    for k, v in straight.items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert list(resumed.log["step"]) == list(range(1, 21))


def test_interrupted_after_the_forward_pass_resumes_exactly(tmp_path):
    """Interrupted inside a step after its forward pass moved the BatchNorm running statistics: the saved
    checkpoint holds the buffers of the last completed step, so the resumed run equals the straight one."""
    straight = train(toy_model(), step_fn, batch_fn, cfg()).model.state_dict()
    calls = {"n": 0}

    def dying_after_forward(model, batch):
        out = step_fn(model, batch)
        calls["n"] += 1
        if calls["n"] == 14:
            raise KeyboardInterrupt
        return out

    with pytest.raises(KeyboardInterrupt):
        train(toy_model(), dying_after_forward, batch_fn, cfg(), run_dir=tmp_path)
    resumed = train(toy_model(), step_fn, batch_fn, cfg(), run_dir=tmp_path)
    assert resumed.resumed_from == 13
    for k, v in straight.items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_loss_decreases_and_log_is_written(tmp_path):
    res = train(toy_model(), step_fn, batch_fn, cfg(steps=60), run_dir=tmp_path)
    assert res.log["loss"].iloc[-10:].mean() < 0.5 * res.log["loss"].iloc[:10].mean()
    log = (tmp_path / "log.csv").read_text().splitlines()
    assert log[0].startswith("step,loss,lr,batch_size") and len(log) == 61


def test_checkpoint_of_another_config_is_refused(tmp_path):
    train(toy_model(), step_fn, batch_fn, cfg(steps=10), run_dir=tmp_path)
    with pytest.raises(CheckpointMismatch, match="another training configuration"):
        train(toy_model(), step_fn, batch_fn, cfg(steps=10, lr=0.1), run_dir=tmp_path)


def test_checkpoint_of_another_model_loss_or_data_is_refused(tmp_path):
    """The fingerprint covers what is trained (TrainConfig.identity: model, loss, data), not only the
    optimisation settings: a run with another loss in the same folder does not resume the first one."""
    a = cfg(steps=10, identity=identity_of({"loss": "batch_hard"}, "data-1"))
    train(toy_model(), step_fn, batch_fn, a, run_dir=tmp_path)
    for other in (identity_of({"loss": "random"}, "data-1"), identity_of({"loss": "batch_hard"}, "data-2")):
        with pytest.raises(CheckpointMismatch, match="another training configuration"):
            train(toy_model(), step_fn, batch_fn, cfg(steps=10, identity=other), run_dir=tmp_path)
    assert train(toy_model(), step_fn, batch_fn, a, run_dir=tmp_path).resumed_from == 10


def test_resume_restores_the_cpu_thread_count_of_the_checkpoint(tmp_path):
    """CPU float results depend on torch's intra-op thread count; a run resumes with the count it saved with."""
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with pytest.raises(KeyboardInterrupt):
            train(toy_model(), lambda m, b: (_ for _ in ()).throw(KeyboardInterrupt), batch_fn, cfg(), run_dir=tmp_path)
        torch.set_num_threads(2)
        train(toy_model(), step_fn, batch_fn, cfg(), run_dir=tmp_path)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(old)


def test_fingerprint_without_identity_is_unchanged():
    """Checkpoints written before `identity` existed keep resuming (an empty identity is left out)."""
    import dataclasses
    import hashlib
    import json

    c = TrainConfig(steps=5, lr=0.1)
    d = dataclasses.asdict(c)
    for k in ("checkpoint_every", "log_every", "progress", "desc", "device", "identity", "schedule",
              "warmup_fraction"):
        d.pop(k)
    assert c.fingerprint() == hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert TrainConfig(steps=5, lr=0.1, identity="x").fingerprint() != c.fingerprint()


def test_one_cycle_schedule_matches_a_plain_loop_and_resumes(tmp_path):
    """schedule="one_cycle" is PyTorch's OneCycleLR stepped after every optimizer step (lr and momentum), as a
    hand-written loop does it; a run stopped mid-way resumes to the same weights."""
    from visualsearch.seeding import step_seed

    c = cfg(schedule="one_cycle", warmup_fraction=0.2, nesterov=False, lr_milestones=(), checkpoint_every=5)
    got = train(toy_model(), step_fn, batch_fn, c)
    model = toy_model()
    opt = torch.optim.SGD(model.parameters(), lr=c.lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=c.lr, total_steps=c.steps, pct_start=0.2)
    lrs = []
    for step in range(c.steps):
        lrs.append(opt.param_groups[0]["lr"])
        torch.manual_seed(step_seed(c.seed, step, stream=1))
        loss, _ = step_fn(model, batch_fn(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    assert all(torch.equal(a, b) for a, b in zip(got.model.state_dict().values(), model.state_dict().values()))
    assert list(got.log["lr"]) == pytest.approx(lrs) and max(lrs) == pytest.approx(c.lr)
    calls = {"n": 0}

    def dying_step(m, batch):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return step_fn(m, batch)

    with pytest.raises(KeyboardInterrupt):
        train(toy_model(), dying_step, batch_fn, c, run_dir=tmp_path)
    resumed = train(toy_model(), step_fn, batch_fn, c, run_dir=tmp_path)
    assert resumed.resumed_from == 7
    assert all(torch.equal(a, b) for a, b in zip(got.model.state_dict().values(), resumed.model.state_dict().values()))
    with pytest.raises(ValueError, match="unknown schedule"):
        train(toy_model(), step_fn, batch_fn, cfg(schedule="cosine"))


def test_step_schedule_and_param_group_scales():
    c = cfg(lr=1.0, lr_milestones=(5, 8), lr_gamma=0.1)
    assert [lr_at(c, s) for s in (0, 4, 5, 7, 8, 19)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    model = toy_model()
    frozen_first = [{"params": model[0].parameters(), "lr_scale": 0.0},
                    {"params": list(model[1].parameters()) + list(model[4].parameters()), "lr_scale": 1.0}]
    before = model[0].weight.clone()
    train(model, step_fn, batch_fn, cfg(steps=5, momentum=0.0), param_groups=frozen_first)
    assert torch.equal(before, model[0].weight)


def test_eval_fn_is_logged_at_its_cadence():
    res = train(toy_model(), step_fn, batch_fn, cfg(steps=10), eval_fn=lambda m, s: {"val": s}, eval_every=4)
    assert res.log["val"].dropna().tolist() == [4, 8, 10]


def test_nan_loss_stops_with_a_clear_error():
    def nan_step(model, batch):
        loss, m = step_fn(model, batch)
        return loss * float("nan"), m

    with pytest.raises(FloatingPointError, match="step 0"):
        train(toy_model(), nan_step, batch_fn, cfg(steps=3))


@pytest.mark.slow
def test_ddp_two_cpu_processes_end_identical(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(Path(__file__).parent / "train_toy.py"), str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for k in r0["state"]:
        if "running" in k or "num_batches" in k:
            continue  # BatchNorm running statistics are per process under DDP (not synchronised)
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    loss = r0["loss"]
    assert sum(loss[-10:]) < 0.5 * sum(loss[:10])


def test_autocast_runs_products_in_bf16_only_when_asked_and_refuses_unknown_precisions():
    from visualsearch.train import autocast, channels_last

    conv = channels_last(torch.nn.Conv2d(3, 4, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 8, 8)
    with autocast("cpu", "bf16"):
        assert conv(x).dtype == torch.bfloat16
    with autocast("cpu", "fp32"):
        assert conv(x).dtype == torch.float32
    with pytest.raises(ValueError, match="precision 'fp16'"):
        autocast("cpu", "fp16")


def test_float32_head_keeps_the_embedding_in_float32_under_bf16_autocast():
    from visualsearch.models.embedding import EmbeddingConfig, EmbeddingNet
    from visualsearch.train import autocast

    torch.manual_seed(0)
    net = EmbeddingNet(EmbeddingConfig("resnet18", 16)).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad(), autocast("cpu", "bf16"):
        e = net(x)
    with torch.no_grad():
        ref = net(x)
    assert e.dtype == torch.float32
    assert torch.allclose(e.norm(dim=1), torch.ones(2), atol=1e-6)  # normalised in float32
    assert torch.nn.functional.cosine_similarity(e, ref).min() > 0.99  # the trunk's bf16 rounding only
