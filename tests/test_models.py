"""Teacher zoo: DeepWV3Plus against NVIDIA's reference facts, torchvision teachers, checkpoint loading."""
import subprocess
import sys

import pytest
import torch

from data.errors import InputError
from tests.reference import DEEPWV3PLUS_KEYS, deterministic_state, reference_keys, write_nvidia_file
from trainable import models, tasks
from trainable.checkpoint import load_weights


def test_state_dict_matches_reference_list_and_param_count():
    with torch.device("meta"):
        model = models.build("deepwv3plus", num_classes=19)
    state = model.state_dict()
    assert [(k, tuple(v.shape)) for k, v in state.items()] == reference_keys(DEEPWV3PLUS_KEYS)  # §6
    # §1 parameter table, "total": NVIDIA's class built under torch 2.13 CPU (their log: "Model params = 137.1M")
    assert sum(p.numel() for p in model.parameters()) == 137_103_936
    assert not any(m.bias is not None for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def test_deterministic_weights_reproduce_reference_logits():
    """§11B of shared/reference/deepwv3plus.md: its weight-fill recipe, its input, its results from NVIDIA's code
    (CPU, fp32, eval mode; bit-identical under torch 2.4.1 and 2.13.0), and its tolerance of about 1e-4 per logit."""
    model = models.build("deepwv3plus", num_classes=19).eval()
    model.load_state_dict(deterministic_state(reference_keys(DEEPWV3PLUS_KEYS)), strict=True)
    x = torch.randn(1, 3, 128, 256, generator=torch.Generator().manual_seed(12345))
    assert x[0, 0, 0, 0].item() == pytest.approx(-1.479808, abs=1e-6)  # §11B "Input": the check value of [0,0,0,0]
    with torch.no_grad():
        y = model(x)
    assert y.shape == (1, 19, 128, 256)  # §11B table, "output shape"
    # §11B table, rows y[0,0,0,0], y[0,5,64,128], y[0,18,127,255], y[0,10,31,200]
    for index, value in [((0, 0, 0, 0), -4.321016e-01), ((0, 5, 64, 128), -4.996084e-01),
                         ((0, 18, 127, 255), -2.337549e-01), ((0, 10, 31, 200), -1.982180e00)]:
        assert y[index].item() == pytest.approx(value, abs=1e-4)
    # §11B table, "per-class mean over pixels, classes 0-18"
    class_means = [-1.03027e-01, 1.64670e00, 2.45489e-01, -2.49053e-01, -6.86389e-03, -4.71840e-01, 5.41592e-02,
                   1.93733e00, -1.10398e00, -1.85673e00, -2.09164e00, 1.24371e00, 9.27332e-01, 8.06880e-01,
                   -2.75596e-01, -2.15391e00, -3.37884e-01, -5.69060e-02, -3.00896e-01]
    assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.tensor(class_means), atol=1e-4)
    assert y.mean().item() == pytest.approx(-1.129858e-01, abs=1e-5)  # §11B table, "output mean / std"
    assert y.std().item() == pytest.approx(1.213703, abs=1e-5)
    # §11B table, "argmax pixel counts per class 0-18"
    counts = torch.bincount(y.argmax(1).flatten(), minlength=19).tolist()
    assert counts == [102, 7950, 0, 0, 0, 0, 114, 20267, 1, 0, 0, 4169, 87, 74, 2, 0, 0, 0, 2]


def test_width_keeps_names_and_output_resolution():
    with torch.device("meta"):
        full = models.build("deepwv3plus")
    narrow = models.build("deepwv3plus", width=0.0625).eval()
    assert list(narrow.state_dict()) == list(full.state_dict())
    with torch.no_grad():
        out = narrow(torch.randn(2, 3, 37, 61))
    assert out.shape == (2, 19, 37, 61)


@pytest.mark.parametrize("arch,num_classes,size,shape", [
    ("tv_resnet18", 10, 64, (1, 10)),
    ("tv_resnet50", 7, 64, (1, 7)),
    ("tv_deeplabv3_resnet50", 5, 65, (1, 5, 65, 65)),
    ("tv_deeplabv3_resnet101", 3, 33, (1, 3, 33, 33)),
])
def test_torchvision_teachers(arch, num_classes, size, shape):
    model = models.build(arch, num_classes=num_classes).eval()
    assert models.info(arch).task == (tasks.Classification.name if len(shape) == 2 else tasks.Segmentation.name)
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size)).shape == shape


def test_torchvision_segmenter_keeps_torchvision_keys():
    from torchvision.models.segmentation import deeplabv3_resnet50

    reference = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=5, aux_loss=False)
    assert list(models.build("tv_deeplabv3_resnet50", num_classes=5).state_dict()) == list(reference.state_dict())


def test_unknown_arch_and_bad_width():
    with pytest.raises(InputError, match="unknown arch 'nope'"):
        models.build("nope")
    with pytest.raises(InputError, match="width"):
        models.build("tv_resnet18", width=0.5)


# NVIDIA's cityscapes_best.pth (§7 of the reference): an optimizer without state and the command that trained it.
NVIDIA_OPTIMIZER = {"state": {}, "param_groups": [{"lr": 0.01, "momentum": 0.9}]}
NVIDIA_COMMAND = "train.py --arch network.deepv3.DeepWV3Plus"


@pytest.mark.parametrize("drop_counters", [False, True])
def test_loads_nvidia_shaped_checkpoint(tmp_path, drop_counters):
    source = models.build("deepwv3plus", width=0.0625)
    for p in source.parameters():
        torch.nn.init.normal_(p)
    write_nvidia_file(tmp_path / "best.pth", source, drop_counters, optimizer=NVIDIA_OPTIMIZER, command=NVIDIA_COMMAND)
    target = load_weights(models.build("deepwv3plus", width=0.0625), tmp_path / "best.pth")
    for (k, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        if not (drop_counters and k.endswith("num_batches_tracked")):
            assert torch.equal(a, b), k


def test_plain_state_dict_and_mismatch_errors(tmp_path):
    model = models.build("deepwv3plus", width=0.0625)
    state = model.state_dict()
    torch.save(state, tmp_path / "plain.pt")
    load_weights(models.build("deepwv3plus", width=0.0625), tmp_path / "plain.pt")
    broken = dict(state)
    broken.pop("final.6.weight")
    broken["extra.weight"] = torch.zeros(1)
    broken["mod1.conv1.weight"] = torch.zeros(1, 3, 3, 3)
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(InputError) as err:
        load_weights(models.build("deepwv3plus", width=0.0625), tmp_path / "broken.pt")
    message = str(err.value)
    assert "missing keys (first: final.6.weight)" in message
    assert "unexpected keys (first: extra.weight)" in message
    assert "mod1.conv1.weight is (1, 3, 3, 3) in the file" in message
    with pytest.raises(InputError, match="not found"):
        load_weights(model, tmp_path / "absent.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a readable weights file"):
        load_weights(model, tmp_path / "junk.pt")


def test_never_unpickles_arbitrary_objects(tmp_path):
    torch.save({"state_dict": {}, "evil": subprocess.Popen}, tmp_path / "evil.pt")
    with pytest.raises(InputError, match="not a readable weights file"):
        load_weights(models.build("deepwv3plus", width=0.0625), tmp_path / "evil.pt")
    assert sys.modules["subprocess"] is subprocess
