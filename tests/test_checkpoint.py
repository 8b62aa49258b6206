"""load_weights on the layouts checkpoints come in: plain, wrapped, DataParallel, Lightning, from GPU, half, broken."""
from __future__ import annotations

import argparse
import pathlib
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from data.errors import InputError
from trainable.checkpoint import load_weights

FORMATS = {"zip": {}, "legacy": {"_use_new_zipfile_serialization": False}}


class TinyNet(nn.Module):
    """Two convs with BN and a linear head: every kind of state_dict entry (weights, biases, BN buffers, counters)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


class LitWrapper(nn.Module):
    """How a LightningModule holds the network: as `self.model`, so its keys read `model.conv1.weight`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.criterion = nn.CrossEntropyLoss()


@pytest.fixture
def source() -> TinyNet:
    """A trained-looking TinyNet in eval mode: random weights, BN statistics and counters unlike a fresh build."""
    torch.manual_seed(0)
    model = TinyNet()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                tensor.fill_(7)
            elif name.endswith("running_var"):
                tensor.uniform_(0.5, 1.5)
            else:
                tensor.normal_()
    return model.eval()


IMAGES = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def load_into_fresh(path: Path, **kwargs) -> TinyNet:
    torch.manual_seed(1)
    fresh = TinyNet().eval()
    assert load_weights(fresh, path, **kwargs) is fresh
    return fresh


def assert_same_model(loaded: nn.Module, source: nn.Module) -> None:
    for (key, expected), (loaded_key, got) in zip(source.state_dict().items(), loaded.state_dict().items()):
        assert key == loaded_key and got.dtype == expected.dtype and got.device.type == "cpu", key
        assert torch.equal(got, expected), key
    with torch.no_grad():
        assert torch.equal(loaded(IMAGES), source(IMAGES))


def test_fresh_model_differs(source):
    """The other tests would pass vacuously if a fresh TinyNet computed what `source` computes."""
    torch.manual_seed(1)
    with torch.no_grad():
        assert not torch.allclose(TinyNet().eval()(IMAGES), source(IMAGES))


@pytest.mark.parametrize("fmt", FORMATS)
def test_plain_state_dict(tmp_path, source, fmt):
    torch.save(source.state_dict(), tmp_path / "plain.pt", **FORMATS[fmt])
    assert_same_model(load_into_fresh(tmp_path / "plain.pt"), source)


@pytest.mark.parametrize("key", ["state_dict", "model", "model_state_dict", "net"])
def test_state_dict_beside_training_entries(tmp_path, source, key):
    optimizer = torch.optim.SGD(source.parameters(), lr=0.1, momentum=0.9)
    source(IMAGES).sum().backward()
    optimizer.step()  # momentum buffers: the optimizer state holds tensors too
    payload = {
        "epoch": 90, "arch": "tinynet", "best_prec1": 71.3, key: source.state_dict(),
        "optimizer": optimizer.state_dict(),
        "mean_iu": np.float64(0.8123), "best_acc1": np.float32(0.713), "iteration": np.int64(1200),
        "args": argparse.Namespace(lr=0.1, epochs=90, arch="tinynet"),  # torchvision's and timm's train.py
    }
    torch.save(payload, tmp_path / "checkpoint.pth")
    assert_same_model(load_into_fresh(tmp_path / "checkpoint.pth"), source)


def test_no_state_dict_names_the_keys(tmp_path, source):
    torch.save({"epoch": 3, "weights": {"a": 1}}, tmp_path / "other.pt")
    with pytest.raises(InputError, match=r"other.pt: no state_dict found; .*'state_dict'.*keys 'epoch', 'weights'"):
        load_into_fresh(tmp_path / "other.pt")


def test_dataparallel_prefix_is_removed(tmp_path, source):
    state = nn.DataParallel(source).state_dict()
    assert all(k.startswith("module.") for k in state)
    torch.save({"state_dict": state, "best_prec1": 91.7}, tmp_path / "dp.th")  # akamaster's CIFAR ResNets
    assert_same_model(load_into_fresh(tmp_path / "dp.th"), source)


def lightning_checkpoint(source: nn.Module) -> dict:
    """What Lightning 2.x's `Trainer.save_checkpoint` writes for `LitWrapper(source)` trained with Adam + StepLR."""
    optimizer = torch.optim.Adam(source.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10)
    source(IMAGES).sum().backward()
    optimizer.step()
    scheduler.step()
    score = torch.tensor(0.4321)
    progress = {"total": {"ready": 120, "completed": 120}, "current": {"ready": 40, "completed": 40}}
    return {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": LitWrapper(source).state_dict(),
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": progress,
                               "epoch_loop.state_dict": {"_batches_that_stepped": 120},
                               "epoch_loop.batch_progress": {**progress, "is_last_batch": False}},
                  **{f"{stage}_loop": {"state_dict": {}} for stage in ("validate", "test", "predict")}},
        "callbacks": {
            "ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min', 'every_n_train_steps': 0, 'every_n_epochs': 1, "
            "'train_time_interval': None}": {
                "monitor": "val_loss", "best_model_score": score, "best_model_path": "/runs/epoch=3.ckpt",
                "current_score": score, "dirpath": "/runs", "best_k_models": {"/runs/epoch=3.ckpt": score},
                "kth_best_model_path": "/runs/epoch=3.ckpt", "kth_value": score, "last_model_path": ""},
            "EarlyStopping{'monitor': 'val_loss', 'mode': 'min'}": {
                "wait_count": 0, "stopped_epoch": 0, "best_score": score, "patience": 3},
        },
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [scheduler.state_dict()],
        "MixedPrecision": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                           "_growth_tracker": 0},
        "hparams_name": "kwargs",
        "hyper_parameters": {"lr": 1e-3, "num_classes": 5, "backbone": "tiny", "milestones": [3, 6],
                             "betas": (0.9, 0.999), "pretrained": None, "augment": {"flip": True}},
    }


def test_lightning_checkpoint_with_strip_prefix(tmp_path, source):
    torch.save(lightning_checkpoint(source), tmp_path / "last.ckpt")
    assert_same_model(load_into_fresh(tmp_path / "last.ckpt", strip_prefix="model."), source)
    with pytest.raises(InputError, match=r"last.ckpt: strip_prefix 'net.': no key starts with it \(first key: model\."):
        load_into_fresh(tmp_path / "last.ckpt", strip_prefix="net.")
    with pytest.raises(InputError, match=r"missing keys \(first: conv1.weight\); \d+ unexpected keys \(first: model\."):
        load_into_fresh(tmp_path / "last.ckpt")


def test_strip_prefix_keeps_other_keys_and_names_them(tmp_path, source):
    state = OrderedDict(LitWrapper(source).state_dict())
    state["teacher.proj.weight"] = torch.zeros(2, 2)  # a second network in the LightningModule
    torch.save({"state_dict": state}, tmp_path / "kd.ckpt")
    with pytest.raises(InputError, match=r"kd.ckpt: .* the model: 1 unexpected keys \(first: teacher.proj.weight\)$"):
        load_into_fresh(tmp_path / "kd.ckpt", strip_prefix="model.")
    state["fc.bias"] = state["model.fc.bias"]
    torch.save({"state_dict": state}, tmp_path / "twice.ckpt")
    with pytest.raises(InputError, match=r"twice.ckpt: strip_prefix 'model.': two keys become 'fc.bias'"):
        load_into_fresh(tmp_path / "twice.ckpt", strip_prefix="model.")


def test_lightning_hyper_parameters_holding_objects_are_refused(tmp_path, source):
    """Decision: weights_only refuses e.g. a Path in hparams; the file is refused with what to do, never unpickled."""
    checkpoint = lightning_checkpoint(source)
    checkpoint["hyper_parameters"]["data_root"] = pathlib.Path("/data/cityscapes")
    torch.save(checkpoint, tmp_path / "hparams.ckpt")
    with pytest.raises(InputError) as err:
        load_into_fresh(tmp_path / "hparams.ckpt", strip_prefix="model.")
    message = str(err.value)
    assert "\n" not in message and "hparams.ckpt" in message
    assert f"pickled Python object ({type(pathlib.Path()).__module__}.{type(pathlib.Path()).__qualname__})" in message


def save_as_if_on_cuda(obj: object, path: Path, monkeypatch: pytest.MonkeyPatch, **kwargs) -> None:
    """torch.save as on a GPU machine with the tensors on cuda:0.

    torch.save records each storage's device as the string `location_tag(storage)` returns ('cuda:0' for a
    storage on the first GPU) and writes the bytes from a CPU copy; tagging CPU storages 'cuda:0' therefore
    writes the very file a GPU machine writes for tensors of the same values.
    """
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(obj, path, **kwargs)


def test_location_tag_is_what_torch_save_records(tmp_path, monkeypatch, source):
    save_as_if_on_cuda(source.state_dict(), tmp_path / "gpu.pt", monkeypatch)
    with zipfile.ZipFile(tmp_path / "gpu.pt") as archive:
        pickled = archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
    assert b"cuda:0" in pickled and b"cpu" not in pickled
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(tmp_path / "gpu.pt", weights_only=True)


@pytest.mark.parametrize("fmt", FORMATS)
def test_tensors_saved_on_cuda_load_on_cpu(tmp_path, monkeypatch, source, fmt):
    save_as_if_on_cuda({"state_dict": source.state_dict(), "epoch": 5}, tmp_path / "gpu.pth", monkeypatch,
                       **FORMATS[fmt])
    assert_same_model(load_into_fresh(tmp_path / "gpu.pth"), source)


def test_nvidia_layout_as_their_file_is(tmp_path, monkeypatch, source):
    """cityscapes_best.pth: legacy format, saved from GPU under numpy 1.x (numpy.core), `module.` keys."""
    payload = {"state_dict": nn.DataParallel(source).state_dict(), "optimizer": {"state": {}, "param_groups": []},
               "epoch": 174, "mean_iu": np.float64(0.8123), "command": "train.py --arch network.deepv3.DeepWV3Plus"}
    save_as_if_on_cuda(payload, tmp_path / "numpy2.pth", monkeypatch, _use_new_zipfile_serialization=False)
    written = (tmp_path / "numpy2.pth").read_bytes()
    numpy2_name = b"cnumpy._core.multiarray\nscalar\n"  # a legacy pickle names globals as text lines
    assert written.count(numpy2_name) == 1
    (tmp_path / "best.pth").write_bytes(written.replace(numpy2_name, b"cnumpy.core.multiarray\nscalar\n"))
    assert_same_model(load_into_fresh(tmp_path / "best.pth"), source)


def test_half_precision_file_loads_into_float32_model(tmp_path, source):
    half = {k: v.half() if v.is_floating_point() else v for k, v in source.state_dict().items()}
    torch.save({"model": half}, tmp_path / "half.pt")
    with torch.no_grad():
        for tensor in source.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())  # the values the file holds, in float32
    loaded = load_into_fresh(tmp_path / "half.pt")
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    assert_same_model(loaded, source)


def test_absent_batch_counters_load_as_zero(tmp_path, source):
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "no_counters.pt")
    loaded = load_into_fresh(tmp_path / "no_counters.pt")
    assert loaded.bn1.num_batches_tracked.item() == 0 and loaded.bn2.num_batches_tracked.item() == 0
    with torch.no_grad():
        assert torch.equal(loaded(IMAGES), source(IMAGES))


def test_mismatch_names_first_missing_and_unexpected(tmp_path, source):
    state = source.state_dict()
    state.pop("conv2.weight")
    state["head.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "mismatch.pt")
    with pytest.raises(InputError, match=r"mismatch.pt: .* the model: 1 missing keys \(first: conv2.weight\); "
                                         r"1 unexpected keys \(first: head.weight\)"):
        load_into_fresh(tmp_path / "mismatch.pt")


def one_line_refusal(path: Path) -> str:
    with pytest.raises(InputError) as err:
        load_into_fresh(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}: not a readable weights file")
    return message


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("fraction", [0.05, 0.5, 0.99])
def test_truncated_file_is_refused(tmp_path, source, fmt, fraction):
    torch.save({"state_dict": source.state_dict(), "epoch": 1}, tmp_path / "full.pt", **FORMATS[fmt])
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: int(len(data) * fraction)])
    assert "expected a complete file written by torch.save" in one_line_refusal(tmp_path / "cut.pt")


class RunConfig:
    """A user's own class, pickled by reference to its code."""

    def __init__(self, lr: float) -> None:
        self.lr = lr


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("what", ["module", "module_in_dict", "instance"])
def test_pickled_code_is_refused(tmp_path, source, fmt, what):
    obj = {"module": source, "module_in_dict": {"epoch": 1, "model": source},
           "instance": {"state_dict": source.state_dict(), "config": RunConfig(0.1)}}[what]
    torch.save(obj, tmp_path / "pickled.pt", **FORMATS[fmt])
    message = one_line_refusal(tmp_path / "pickled.pt")
    name = f"{__name__}.{'RunConfig' if what == 'instance' else 'TinyNet'}"
    assert f"pickled Python object ({name})" in message
    assert "save model.state_dict() instead" in message
