import pytest
import torch
import torch.nn.functional as F

from vlv.eval.inception import InceptionE, InceptionFeatures
from vlv.loading import CheckpointMismatchError

# ----- the state dict of pt_inception-2015-12-05-6726825d.pth, written out from the reference architecture ---------
# (torchvision's Inception3(num_classes=1008, aux_logits=False) with pytorch-fid's FIDInceptionA/C/E_1/E_2 blocks):
# conv weight shape (out, in, kh, kw) of every BasicConv2d, block by block.


def _block_a(cin: int, pool: int) -> dict:
    return {
        "branch1x1": (64, cin, 1, 1), "branch5x5_1": (48, cin, 1, 1), "branch5x5_2": (64, 48, 5, 5),
        "branch3x3dbl_1": (64, cin, 1, 1), "branch3x3dbl_2": (96, 64, 3, 3), "branch3x3dbl_3": (96, 96, 3, 3),
        "branch_pool": (pool, cin, 1, 1),
    }  # fmt: skip


def _block_c(c7: int) -> dict:
    return {
        "branch1x1": (192, 768, 1, 1), "branch7x7_1": (c7, 768, 1, 1), "branch7x7_2": (c7, c7, 1, 7),
        "branch7x7_3": (192, c7, 7, 1), "branch7x7dbl_1": (c7, 768, 1, 1), "branch7x7dbl_2": (c7, c7, 7, 1),
        "branch7x7dbl_3": (c7, c7, 1, 7), "branch7x7dbl_4": (c7, c7, 7, 1), "branch7x7dbl_5": (192, c7, 1, 7),
        "branch_pool": (192, 768, 1, 1),
    }  # fmt: skip


def _block_e(cin: int) -> dict:
    return {
        "branch1x1": (320, cin, 1, 1), "branch3x3_1": (384, cin, 1, 1), "branch3x3_2a": (384, 384, 1, 3),
        "branch3x3_2b": (384, 384, 3, 1), "branch3x3dbl_1": (448, cin, 1, 1), "branch3x3dbl_2": (384, 448, 3, 3),
        "branch3x3dbl_3a": (384, 384, 1, 3), "branch3x3dbl_3b": (384, 384, 3, 1), "branch_pool": (192, cin, 1, 1),
    }  # fmt: skip


CONVS = {
    "Conv2d_1a_3x3": (32, 3, 3, 3), "Conv2d_2a_3x3": (32, 32, 3, 3), "Conv2d_2b_3x3": (64, 32, 3, 3),
    "Conv2d_3b_1x1": (80, 64, 1, 1), "Conv2d_4a_3x3": (192, 80, 3, 3),
    **{f"Mixed_5b.{k}": v for k, v in _block_a(192, 32).items()},
    **{f"Mixed_5c.{k}": v for k, v in _block_a(256, 64).items()},
    **{f"Mixed_5d.{k}": v for k, v in _block_a(288, 64).items()},
    "Mixed_6a.branch3x3": (384, 288, 3, 3), "Mixed_6a.branch3x3dbl_1": (64, 288, 1, 1),
    "Mixed_6a.branch3x3dbl_2": (96, 64, 3, 3), "Mixed_6a.branch3x3dbl_3": (96, 96, 3, 3),
    **{f"Mixed_6b.{k}": v for k, v in _block_c(128).items()},
    **{f"Mixed_6c.{k}": v for k, v in _block_c(160).items()},
    **{f"Mixed_6d.{k}": v for k, v in _block_c(160).items()},
    **{f"Mixed_6e.{k}": v for k, v in _block_c(192).items()},
    "Mixed_7a.branch3x3_1": (192, 768, 1, 1), "Mixed_7a.branch3x3_2": (320, 192, 3, 3),
    "Mixed_7a.branch7x7x3_1": (192, 768, 1, 1), "Mixed_7a.branch7x7x3_2": (192, 192, 1, 7),
    "Mixed_7a.branch7x7x3_3": (192, 192, 7, 1), "Mixed_7a.branch7x7x3_4": (192, 192, 3, 3),
    **{f"Mixed_7b.{k}": v for k, v in _block_e(1280).items()},
    **{f"Mixed_7c.{k}": v for k, v in _block_e(2048).items()},
}  # fmt: skip


def expected_state_shapes() -> dict[str, tuple[int, ...]]:
    shapes = {"fc.weight": (1008, 2048), "fc.bias": (1008,)}  # the file keeps the 1008-way classifier
    for name, conv in CONVS.items():
        shapes[f"{name}.conv.weight"] = conv  # no conv bias: BatchNorm follows
        for stat in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.bn.{stat}"] = (conv[0],)
        shapes[f"{name}.bn.num_batches_tracked"] = ()
    return shapes


@pytest.fixture(scope="module")
def network():
    """Random init: He-initialised convolutions, so that the features depend on the image (PyTorch's default init
    shrinks the signal over 94 layers until every image gives the same features), and random BatchNorm statistics,
    so that a load that drops them shows."""
    torch.manual_seed(0)
    net = InceptionFeatures()
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.uniform_(0.5, 1.5)
    return net


def test_state_dict_matches_the_fid_weights_file(network):
    shapes = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    assert len(CONVS) == 94
    assert len(shapes) == 94 * 6 + 2  # per conv: its weight, 4 BatchNorm tensors, the step counter; fc weight + bias
    assert shapes == expected_state_shapes()
    assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert shapes["Mixed_7c.branch_pool.conv.weight"] == (192, 2048, 1, 1)
    assert network.Conv2d_1a_3x3.bn.eps == 1e-3
    assert network.Mixed_7c.max_pool and not network.Mixed_7b.max_pool  # only the last block max-pools
    assert not any(p.requires_grad for p in network.parameters())


def test_fid_patches_of_the_pool_branches():
    """The FID graph's blocks: average pools ignore the padding; the last block (Mixed_7c) max-pools."""
    x = torch.randn(1, 64, 5, 5)
    seen = {}
    for max_pool in (False, True):
        block = InceptionE(64, max_pool=max_pool).eval()
        block.branch_pool.register_forward_hook(lambda m, inp, out, k=max_pool: seen.__setitem__(k, inp[0]))
        block(x)
    torch.testing.assert_close(seen[False], F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
    torch.testing.assert_close(seen[True], F.max_pool2d(x, 3, stride=1, padding=1))
    assert not torch.allclose(seen[False], F.avg_pool2d(x, 3, stride=1, padding=1))  # the borders differ


def test_features_shape_and_determinism(network):
    images = torch.rand(2, 3, 64, 80, generator=torch.Generator().manual_seed(0))  # any size: resized to 299
    # One forward (each costs seconds on a CPU): the third image repeats the first, so its features must too —
    # no dropout, no batch statistics, nothing but the image decides them.
    out = network(torch.cat([images, images[:1]]))
    assert out.shape == (3, 2048)
    assert torch.isfinite(out).all()
    assert (out[0] - out[1]).abs().max() > 1e-2  # different images, different features
    torch.testing.assert_close(out[2], out[0], rtol=1e-5, atol=1e-6)
    network.train()
    assert not network.training  # BatchNorm never uses batch statistics


def test_from_file_round_trip(network, tmp_path):
    path = tmp_path / "pt_inception.pth"
    torch.save(network.state_dict(), path)
    # Same weights in the same class is the same function; comparing tensors spares two 299 px forwards.
    loaded = InceptionFeatures.from_file(path)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    reloaded = loaded.state_dict()
    assert all(torch.equal(reloaded[k], v) for k, v in network.state_dict().items())
    # A file without the BatchNorm step counters (never read in eval mode) loads too.
    state = {k: v for k, v in network.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, path)
    reloaded = InceptionFeatures.from_file(path).state_dict()
    assert all(torch.equal(reloaded[k], v) for k, v in state.items())


def test_from_file_names_wrong_keys(network, tmp_path):
    state = dict(network.state_dict())
    del state["Mixed_7c.branch_pool.conv.weight"]
    state["fc.weight"] = torch.zeros(1000, 2048)  # torchvision's ImageNet classifier: the wrong Inception
    state["AuxLogits.fc.bias"] = torch.zeros(1000)
    torch.save(state, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointMismatchError) as err:
        InceptionFeatures.from_file(tmp_path / "wrong.pth")
    for key in ("Mixed_7c.branch_pool.conv.weight", "fc.weight", "AuxLogits.fc.bias"):
        assert key in str(err.value)
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05"):
        InceptionFeatures.from_file(tmp_path / "absent.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(CheckpointMismatchError, match="not a state dict"):
        InceptionFeatures.from_file(tmp_path / "list.pth")


def test_bad_images_are_errors(network):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        network(torch.full((1, 3, 8, 8), 255.0))
    with pytest.raises(ValueError, match="B, 3, H, W"):
        network(torch.rand(3, 8, 8))
