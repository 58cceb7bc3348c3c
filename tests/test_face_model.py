"""Face trunk, branches, frozen prefixes, the capacity-control probe and the multi-head sharing tree."""
import pytest
import torch
import torch.nn.functional as F

from visualsearch.models.face import (FaceNetConfig, FaceTrunk, FrozenPrefixNet, IdentityNet, MultiHeadFaceNet,
                                      ProbeBranch, make_branch, prepare_images)

CFG = FaceNetConfig(widths=(4, 8, 16, 32), blocks=(1, 1, 1, 1), input_size=32)


def _x(n=3, size=32, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_trunk_stage_shapes_and_branch_points():
    trunk = FaceTrunk(CFG).eval()
    x = _x()
    assert trunk(x).shape == (3, 32, 4, 4)
    for d, (c, s) in enumerate([(3, 32), (4, 32), (8, 16), (16, 8), (32, 4)]):
        h = trunk(x, 0, d)
        assert h.shape == (3, c, s, s) and trunk.channels_at(d) == c
        assert torch.allclose(trunk(h, d), trunk(x), atol=1e-5)  # the rest of the trunk from the branch point


def test_prepare_images_range():
    x = torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 3, 1, 1)
    assert torch.allclose(prepare_images(x).flatten(), torch.tensor([-2.0, 0.0078, 2.0]), atol=1e-3)


def test_copied_branch_starts_from_the_trunk_and_is_independent():
    trunk = FaceTrunk(CFG).eval()
    for d in range(5):
        br = make_branch(trunk, d, 5).eval()
        assert len(br.stages) == 4 - d
        h = trunk(_x(), 0, d)
        assert torch.allclose(br.stages[0](h) if d < 4 else h, trunk(h, d, d + 1) if d < 4 else h)
        assert br(h).shape == (3, 5)
    br = make_branch(trunk, 1, 5)
    with torch.no_grad():
        br.stages[0][0].conv1.weight.add_(1.0)
    assert not torch.equal(br.stages[0][0].conv1.weight, trunk.stages[1][0].conv1.weight)
    fresh = make_branch(trunk, 1, 5, init="scratch")
    assert not torch.equal(fresh.stages[0][0].conv1.weight, trunk.stages[1][0].conv1.weight)
    with pytest.raises(ValueError):
        make_branch(trunk, 5, 2)
    with pytest.raises(ValueError):
        make_branch(trunk, 1, 2, init="random")


def test_frozen_prefix_stays_fixed_while_branch_trains():
    trunk = FaceTrunk(CFG)
    net = FrozenPrefixNet(trunk, make_branch(trunk, 2, 3), depth=2).train()
    before = {k: v.clone() for k, v in net.prefix.state_dict().items()}  # weights and BN running stats
    br_before = net.branch.stages[0][0].conv1.weight.clone()
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):
        loss = F.cross_entropy(net(_x()), torch.tensor([0, 1, 2]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(before[k], v) for k, v in net.prefix.state_dict().items())
    assert all(p.grad is None for p in net.prefix.parameters())
    assert not torch.equal(br_before, net.branch.stages[0][0].conv1.weight)
    assert all(torch.equal(a, b) for a, b in zip(trunk.stages[0].state_dict().values(), before.values()))


def test_multihead_equals_separate_attribute_networks_in_one_pass():
    trunk = FaceTrunk(CFG).eval()
    pattern = {"age": 1, "gender": 4, "ethnicity": 3, "emotion": 1}
    branches = {a: make_branch(trunk, d, n) for (a, d), n in zip(pattern.items(), (9, 2, 7, 5))}
    for b in branches.values():  # make branches differ from the trunk, as after fine-tuning
        for p in b.parameters():
            p.data.add_(0.01 * torch.randn_like(p))
    net = MultiHeadFaceNet(trunk, branches).eval()
    assert net.pattern() == pattern and len(net.shared) == 4
    calls = []
    for s in net.shared:
        s.register_forward_hook(lambda m, i, o: calls.append(1))
    x = _x()
    out = net(x)
    assert len(calls) == 4  # each shared stage runs once for all four attributes
    for a, d in pattern.items():
        single = FrozenPrefixNet(trunk, branches[a], d).eval()
        assert torch.allclose(out[a], single(x), atol=1e-5)
    assert {a: o.shape[1] for a, o in out.items()} == {"age": 9, "gender": 2, "ethnicity": 7, "emotion": 5}


def test_probe_has_nearly_equal_capacity_and_compute_at_every_depth():
    from visualsearch.flops import count_flops
    from visualsearch.models.face import probe_patch
    trunk = FaceTrunk(FaceNetConfig(input_size=48)).eval()
    assert [probe_patch(trunk, d, 48) for d in range(5)] == [4, 4, 2, 1, 1]
    counts, macs = [], []
    x = torch.zeros(1, 3, 48, 48)
    for d in range(5):
        probe = ProbeBranch(trunk.channels_at(d), 5, patch=probe_patch(trunk, d, 48))
        counts.append(sum(p.numel() for p in probe.parameters()))
        macs.append(count_flops(probe, trunk(x, 0, d))["macs"])
    assert max(counts) / min(counts) < 1.2
    assert max(macs[:4]) / min(macs[:4]) < 1.2 and macs[4] < macs[0]  # depth 4 is already below the grid
    probe = ProbeBranch(8, 5)
    assert probe(torch.randn(2, 8, 12, 12)).shape == (2, 5) and probe(torch.randn(2, 8, 3, 3)).shape == (2, 5)


def test_identity_net_learns_above_chance():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    colours = torch.rand(4, 3, 1, 1, generator=g)
    def batch(n):
        y = torch.randint(0, 4, (n,), generator=g)
        return colours[y].expand(-1, -1, 16, 16) + 0.3 * torch.randn(n, 3, 16, 16, generator=g), y
    net = IdentityNet(FaceNetConfig(widths=(4, 8), blocks=(1, 1), input_size=16), 4)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(60):
        x, y = batch(32)
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    x, y = batch(200)
    assert (net(x).argmax(1) == y).float().mean() > 0.6  # chance 0.25
    e = net.embed(x)
    assert torch.allclose(e.norm(dim=1), torch.ones(200), atol=1e-5)
