"""Embedding model: shapes, unit norm, weight loading from local files, gradients; the augmentation."""
import pytest
import torch
import torchvision

from visualsearch.data.augment import AugmentConfig, augment_batch, prepare_batch
from visualsearch.models.embedding import AttributeClassifier, EmbeddingConfig, EmbeddingNet


def test_embedding_shapes_unit_norm_and_features():
    net = EmbeddingNet(EmbeddingConfig(arch="resnet18", dim=32)).eval()
    x = torch.rand(3, 3, 32, 32)
    e = net(x)
    assert e.shape == (3, 32) and torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)
    assert net.features(x).shape == (3, 512)


def test_gradients_reach_the_trunk_and_head():
    net = EmbeddingNet(EmbeddingConfig(dim=8))
    e = net(torch.rand(4, 3, 32, 32))
    (e[:2] * e[2:]).sum().backward()
    assert net.head.weight.grad.abs().sum() > 0 and net.trunk.net.conv1.weight.grad.abs().sum() > 0


def test_imagenet_weights_load_from_a_local_torchvision_state_dict(tmp_path):
    src = torchvision.models.resnet18(weights=None)
    torch.nn.init.constant_(src.layer4[1].conv2.weight, 0.123)
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(src.state_dict(), path)
    net = EmbeddingNet(EmbeddingConfig(weights="imagenet", weights_path=str(path), dim=16))
    assert torch.equal(net.trunk.net.layer4[1].conv2.weight, src.layer4[1].conv2.weight)
    assert torch.equal(net.trunk.net.conv1.weight, src.conv1.weight)


def test_missing_or_wrong_weights_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ImageNet weights not found at .*nowhere.pth"):
        EmbeddingNet(EmbeddingConfig(weights="imagenet", weights_path=str(tmp_path / "nowhere.pth")))
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ValueError, match=r"r18.pth: not a state dict of this trunk"):
        EmbeddingNet(EmbeddingConfig(arch="resnet34", weights="imagenet", weights_path=str(tmp_path / "r18.pth")))
    with pytest.raises(ValueError, match="unknown trunk"):
        EmbeddingNet(EmbeddingConfig(arch="vgg16"))
    with pytest.raises(ValueError, match="none, imagenet or pretrained"):
        EmbeddingNet(EmbeddingConfig(weights="internet"))


def test_pretrained_attribute_trunk_transfers(tmp_path):
    clf = AttributeClassifier("resnet18", {"category": 3, "colour": 5})
    x = torch.rand(4, 3, 32, 32)
    loss, acc = clf.loss(x, {"category": torch.tensor([0, 1, 2, 0]), "colour": torch.tensor([4, 3, 2, 1])})
    loss.backward()
    assert loss.item() > 0 and set(acc) == {"acc_category", "acc_colour"}
    path = tmp_path / "trunk.pt"
    torch.save(clf.trunk_state_dict(), path)
    net = EmbeddingNet(EmbeddingConfig(weights="pretrained", weights_path=str(path), dim=16)).eval()
    clf.eval()
    assert torch.allclose(net.features(x), clf.trunk(x), atol=1e-6)


@pytest.mark.slow
def test_attribute_pretraining_learns_above_chance():
    torch.manual_seed(0)
    # colour classes that a trunk can tell apart in a few steps: mean intensity of one channel
    y = torch.arange(3).repeat(4)
    x = torch.rand(12, 3, 16, 16) * 0.3
    x[torch.arange(12), y] += 0.7
    clf = AttributeClassifier("resnet18", {"colour": 3})
    opt = torch.optim.Adam(clf.parameters(), 1e-3)
    for _ in range(8):
        loss, acc = clf.loss(x, {"colour": y})
        opt.zero_grad(), loss.backward(), opt.step()
    assert acc["acc_colour"] > 0.6  # chance is 1/3


# ----------------------------------------------------------------------------------------- augmentation

def test_augmentation_is_deterministic_given_the_generator_and_bounded():
    x = (torch.rand(6, 3, 40, 40) * 255).to(torch.uint8)
    a = augment_batch(x, 32, torch.Generator().manual_seed(1))
    b = augment_batch(x, 32, torch.Generator().manual_seed(1))
    c = augment_batch(x, 32, torch.Generator().manual_seed(2))
    assert a.shape == (6, 3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1


def test_no_op_augmentation_is_a_resize_and_flip_is_a_mirror():
    x = torch.rand(2, 3, 16, 16)
    off = AugmentConfig(crop_prob=0, flip_prob=0, noise_prob=0, resize_methods=("bilinear",))
    assert torch.allclose(augment_batch(x, 16, torch.Generator(), off), x)
    flip = AugmentConfig(crop_prob=0, flip_prob=1, noise_prob=0, resize_methods=("bilinear",))
    assert torch.allclose(augment_batch(x, 16, torch.Generator(), flip), x.flip(-1))
    assert torch.allclose(prepare_batch((x * 255).to(torch.uint8), 16), (x * 255).to(torch.uint8).float() / 255)


def test_crop_and_noise_happen_at_their_rates():
    # a left-to-right ramp: a crop changes the mean of the resized image's first column
    ramp = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(400, 3, 64, 64).contiguous()
    crop = AugmentConfig(crop_prob=0.5, flip_prob=0, noise_prob=0, resize_methods=("bilinear",))
    out = augment_batch(ramp, 64, torch.Generator().manual_seed(3), crop)
    changed = ((out - ramp).abs().amax(dim=(1, 2, 3)) > 1e-3).float().mean()
    assert 0.4 < changed < 0.6
    noise = AugmentConfig(crop_prob=0, flip_prob=0, noise_prob=0.5, noise_std=0.02, resize_methods=("bilinear",))
    grey = torch.full((400, 3, 16, 16), 0.5)
    out = augment_batch(grey, 16, torch.Generator().manual_seed(4), noise)
    std = (out - 0.5).flatten(1).std(1)
    noisy = std > 0.01
    assert 0.4 < noisy.float().mean() < 0.6 and abs(std[noisy].mean() - 0.02) < 0.002
