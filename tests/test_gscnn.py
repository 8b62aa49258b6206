"""Gated-SCNN teacher against nv-tlabs' reference facts (shared/reference/gscnn.md): keys, numbers, Canny, checkpoint."""
from collections import defaultdict

import cv2
import numpy as np
import pytest
import torch

from data.errors import InputError
from tests.reference import GSCNN_KEYS, deterministic_state, reference_keys, write_nvidia_file
from trainable import models, tasks
from trainable.checkpoint import load_weights
from trainable.inventory import count_flops, count_params, measure
from trainable.models.gscnn import GSCNN, canny_bytes, canny_map

NARROW = 0.0625
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)  # gscnn.md §11
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def normalise(image: torch.Tensor) -> torch.Tensor:
    """x = (k/255 - mean)/std in float32, as gscnn.md §11."""
    return (image / 255 - MEAN) / STD


def reference_input() -> torch.Tensor:
    """The public input of gscnn.md §14B: uint8 image from a generator seeded 2025, normalised."""
    image = torch.randint(0, 256, (1, 3, 64, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(2025))
    assert image.sum().item() == 3_155_427  # §14B
    assert image[0, :, 0, 0].tolist() == [62, 25, 85]  # §14B
    return normalise(image)


def test_state_dict_matches_reference_list_and_param_count():
    with torch.device("meta"):
        model = models.build("gscnn", num_classes=19, width=1.0)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == reference_keys(GSCNN_KEYS)
    assert count_params(model) == 137_278_190  # §1
    assert sum(b.numel() for k, b in model.named_buffers() if k.endswith(("running_mean", "running_var"))) == 44_220  # §1
    with_bias = sorted(k[: -len(".bias")] for k, p in model.named_parameters()
                       if k.endswith(".bias") and isinstance(model.get_submodule(k[: -len(".bias")]), torch.nn.Conv2d))
    assert with_bias == sorted(["dsn1", "dsn3", "dsn4", "dsn7", "d1", "d2", "d3"]  # §2 convolution biases
                               + [f"gate{g}._gate_conv.{i}" for g in (1, 2, 3) for i in (1, 3)])


def test_width_keeps_names_and_num_classes_changes_only_the_head():
    with torch.device("meta"):
        full = models.build("gscnn").state_dict()
        other = models.build("gscnn", num_classes=7).state_dict()
    assert list(models.build("gscnn", width=NARROW).state_dict()) == list(full)
    assert [k for k in full if full[k].shape != other[k].shape] == ["final_seg.6.weight"]  # §9


def test_canny_cast_truncates_and_wraps_like_numpy_on_x86():
    values = torch.tensor([-0.3, -1.2, -2.1, 1.7, 2.6, 0.0]).view(1, 1, 1, 6).expand(1, 3, 1, 6)
    assert canny_bytes(values)[0, 0, :, 0].tolist() == [0, 255, 254, 1, 2, 0]  # §4.3 item 1
    k = torch.arange(256, dtype=torch.uint8).view(1, 1, 1, 256).expand(1, 3, 1, 256)
    got = canny_bytes(normalise(k))[0, 0]  # (256, 3): byte of each channel for pixel value k
    table = {  # §4.3 item 2: (first k, last k, byte) per channel
        0: [(0, 6, 254), (7, 65, 255), (66, 182, 0), (183, 240, 1), (241, 255, 2)],
        1: [(0, 2, 254), (3, 59, 255), (60, 173, 0), (174, 230, 1), (231, 255, 2)],
        2: [(0, 46, 255), (47, 160, 0), (161, 218, 1), (219, 255, 2)],
    }
    for channel, steps in table.items():
        expected = [byte for first, last, byte in steps for _ in range(first, last + 1)]
        assert got[:, channel].tolist() == expected, channel


def test_canny_of_reference_input():
    x = reference_input()
    assert x[0, 0, 0, 0].item() == pytest.approx(-1.0561693, abs=1e-6)  # §14B
    assert x.mean().item() == pytest.approx(0.2421884, abs=1e-6)  # §14B
    assert x.std().item() == pytest.approx(1.2981937, abs=1e-6)  # §14B
    cast = canny_bytes(x)
    assert cast.shape == (1, 64, 128, 3) and cast.dtype == np.uint8
    assert int(cast.sum(dtype=np.int64)) == 1_414_667  # §14B byte sum
    values, counts = np.unique(cast, return_counts=True)
    assert dict(zip(values.tolist(), counts.tolist())) == {0: 10904, 1: 5631, 2: 2534, 254: 317, 255: 5190}  # §14B
    assert cast[0, 0, 0].tolist() == [255, 255, 0]  # §14B first pixel
    edges = canny_map(x)
    assert edges.shape == (1, 1, 64, 128) and edges.dtype == torch.float32
    assert set(edges.unique().tolist()) == {0.0, 255.0}  # §4.3 item 4: 0/255, not 0/1
    assert int((edges == 255).sum()) == 2744  # §14B Canny output
    bgr = cv2.Canny(np.ascontiguousarray(cast[0, :, :, ::-1]), 10, 100)
    assert not np.array_equal(bgr, edges[0, 0].numpy().astype(np.uint8))  # §4.3 item 3: channel order R, G, B


def test_canny_map_is_detached_and_follows_the_input_dtype_and_device():
    x = reference_input()
    reference = canny_map(x)
    leaf = x.clone().requires_grad_(True)
    assert not canny_map(leaf * 1).requires_grad
    for dtype in (torch.float64, torch.bfloat16):
        cast = x.to(dtype)
        assert canny_map(cast).dtype == dtype
    assert torch.equal(canny_map(x.double()).float(), reference)
    assert torch.equal(canny_map(x.contiguous(memory_format=torch.channels_last)), reference)
    pair = torch.cat([x, x.flip(-1)])  # each image of a batch has its own map
    assert torch.equal(canny_map(pair)[:1], reference)
    assert torch.equal(canny_map(pair)[1:], canny_map(x.flip(-1)))
    on_meta = canny_map(x.to("meta"))
    assert on_meta.device.type == "meta" and on_meta.shape == (1, 1, 64, 128)


def test_deterministic_weights_reproduce_reference_outputs():
    """Full width at 64x128 on CPU (about 15 s on a 2-core machine, most of it drawing the 137M weights)."""
    with torch.device("meta"):
        model = models.build("gscnn", num_classes=19)
    model.load_state_dict(deterministic_state(reference_keys(GSCNN_KEYS)), strict=True, assign=True)  # §14B fill
    model.eval()
    with torch.no_grad():
        seg, edge = model(reference_input(), return_edge=True)
    assert seg.shape == (1, 19, 64, 128) and edge.shape == (1, 1, 64, 128)  # §14B
    assert seg.mean().item() == pytest.approx(-1.886347e-01, abs=1e-5)  # §14B
    assert seg.std().item() == pytest.approx(2.038212e00, abs=1e-5)  # §14B
    assert seg.min().item() == pytest.approx(-6.622804e00, abs=1e-4)  # §14B
    assert seg.max().item() == pytest.approx(4.317002e00, abs=1e-4)  # §14B
    assert seg.abs().sum().item() == pytest.approx(2.352926e05, rel=1e-5)  # §14B
    for index, value in [((0, 0, 0, 0), 1.5765777e-01), ((0, 5, 32, 64), 6.6459960e-01),  # §14B point values
                         ((0, 18, 63, 127), 1.7416397e-01), ((0, 10, 17, 100), 2.6109830e-01)]:
        assert seg[index].item() == pytest.approx(value, abs=1e-4), index
    class_means = [1.28543e00, -6.64115e-02, 1.30530e00, 2.57043e00, 5.96602e-01, 7.10443e-01, -2.50840e00,  # §14B
                   2.55135e-01, -1.02383e00, 1.05041e00, 3.41669e-02, -4.10616e00, 3.01237e00, -4.86606e00,
                   4.35880e-01, -1.50357e00, -3.08850e-01, -9.08838e-01, 4.51900e-01]
    assert torch.allclose(seg.mean(dim=(0, 2, 3)), torch.tensor(class_means), atol=1e-4)
    counts = torch.bincount(seg.argmax(1).flatten(), minlength=19).tolist()
    assert counts == [210, 0, 0, 1801, 0, 23, 0, 3, 0, 6, 0, 0, 6149, 0, 0, 0, 0, 0, 0]  # §14B argmax counts
    assert edge.mean().item() == pytest.approx(9.660537e-02, abs=1e-6)  # §14B
    assert edge.std().item() == pytest.approx(1.618407e-01, abs=1e-6)  # §14B
    assert edge.min().item() == pytest.approx(1.376397e-08, rel=1e-3)  # §14B
    assert edge.max().item() == pytest.approx(9.850467e-01, abs=1e-6)  # §14B
    for index, value in [((0, 0, 0, 0), 1.9998579e-01), ((0, 0, 32, 64), 2.5154275e-01),  # §14B edge point values
                         ((0, 0, 63, 127), 5.4363596e-01), ((0, 0, 17, 100), 1.3949386e-02)]:
        assert edge[index].item() == pytest.approx(value, abs=1e-5), index
    assert int((edge > 0.5).sum()) == 371  # §14B edge pixels > 0.5


@pytest.mark.parametrize("training", [False, True])
def test_forward_interface_any_size(training):
    torch.manual_seed(0)
    model = models.build("gscnn", width=NARROW).train(training)
    assert models.info("gscnn").task == tasks.Segmentation.name
    x = normalise(torch.randint(0, 256, (2, 3, 37, 61), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)))
    torch.manual_seed(1)
    logits = model(x)
    torch.manual_seed(1)
    pair = model(x, return_edge=True)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 19, 37, 61)  # §7.2
    assert isinstance(pair, tuple) and len(pair) == 2
    seg, edge = pair
    assert torch.equal(seg, logits) and edge.shape == (2, 1, 37, 61)
    assert bool(((edge > 0) & (edge < 1)).all())  # §7.2: probabilities in (0, 1)
    (seg.square().mean() + edge.mean()).backward()
    assert model.cw.weight.grad is not None and model.mod1.conv1.weight.grad is not None
    assert model.dsn1.weight.grad is None  # §4.1: dsn1 is unused in the forward pass


def test_edge_output_does_not_depend_on_the_canny_map(monkeypatch):
    model = models.build("gscnn", width=NARROW).eval()
    x = reference_input()
    with torch.no_grad():
        seg, edge = model(x, return_edge=True)
        monkeypatch.setattr("trainable.models.gscnn.canny_map", lambda t: torch.zeros_like(t[:, :1]))
        seg_blind, edge_blind = model(x, return_edge=True)
    assert torch.equal(edge, edge_blind)  # §4.3 item 5
    assert not torch.equal(seg, seg_blind)


def test_onnx_unsupported_names_the_canny_step():
    assert isinstance(GSCNN.onnx_unsupported, str) and "Canny" in GSCNN.onnx_unsupported


def test_flops_and_params_at_reference_sizes():
    with torch.device("meta"):
        model = models.build("gscnn")
    assert count_params(model) == 137_278_190  # §1
    assert count_flops(model, (1024, 2048)) == pytest.approx(12.08e12, abs=0.005e12)  # §15
    assert count_flops(model, (128, 256)) == pytest.approx(188.8e9, abs=0.05e9)  # §15
    assert count_flops(model, (64, 128)) == pytest.approx(47.2e9, abs=0.05e9)  # §15
    parts: dict[str, int] = defaultdict(int)
    for name, flops in measure(model, (1024, 2048))[1].items():
        parts[name.split(".")[0]] += flops
    for part, tera in [("mod7", 2.47), ("aspp", 1.92), ("mod4", 1.79), ("mod5", 1.74), ("final_seg", 1.36),  # §15
                       ("mod2", 0.86), ("mod3", 0.86), ("mod6", 0.62), ("res1", 0.31)]:
        assert parts[part] == pytest.approx(tera * 1e12, abs=0.005e12), part
    for part, tera in [("res2", 0.077), ("res3", 0.019), ("bot_aspp", 0.026)]:  # §15
        assert parts[part] == pytest.approx(tera * 1e12, abs=0.0005e12), part


def test_flops_of_a_real_cpu_model_skip_canny():
    model = models.build("gscnn", width=NARROW)
    with torch.device("meta"):
        on_meta = models.build("gscnn", width=NARROW)
    assert count_flops(model, (1024, 2048)) == count_flops(on_meta, (1024, 2048))


# nv-tlabs' best_cityscapes_checkpoint.pth (§10): an SGD optimizer's state and the command that trained it.
GSCNN_OPTIMIZER = {"state": {i: {"momentum_buffer": torch.zeros(1)} for i in range(3)},
                   "param_groups": [{"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4, "params": [0, 1, 2]}]}
GSCNN_COMMAND = "train.py --dataset cityscapes --arch network.gscnn.GSCNN --trunk resnet101"


@pytest.mark.parametrize("drop_counters", [False, True])
def test_loads_nvidia_shaped_checkpoint(tmp_path, drop_counters):
    source = models.build("gscnn", width=NARROW)
    for p in source.parameters():
        torch.nn.init.normal_(p)
    write_nvidia_file(tmp_path / "best_cityscapes_checkpoint.pth", source, drop_counters, optimizer=GSCNN_OPTIMIZER,
                      command=GSCNN_COMMAND)
    target = load_weights(models.build("gscnn", width=NARROW), tmp_path / "best_cityscapes_checkpoint.pth")
    for (k, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        if not (drop_counters and k.endswith("num_batches_tracked")):
            assert torch.equal(a, b), k


def test_mismatched_checkpoints_name_the_first_key(tmp_path):
    deeplab = models.build("deepwv3plus", width=NARROW)
    write_nvidia_file(tmp_path / "deeplab.pth", deeplab, drop_counters=False, optimizer=GSCNN_OPTIMIZER,
                      command=GSCNN_COMMAND)
    with pytest.raises(InputError) as err:
        load_weights(models.build("gscnn", width=NARROW), tmp_path / "deeplab.pth")
    assert "missing keys (first: dsn1.weight)" in str(err.value)
    assert "unexpected keys (first: final.0.weight)" in str(err.value)
    assert "bot_aspp.weight" in str(err.value)
    state = models.build("gscnn", width=NARROW).state_dict()
    del state["dsn1.weight"], state["dsn1.bias"]  # as if saved after nv-tlabs' 3648b86 dropped dsn1 (§1)
    state["dsn2.weight"] = torch.zeros(1)
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "no_dsn1.pth")
    with pytest.raises(InputError) as err:
        load_weights(models.build("gscnn", width=NARROW), tmp_path / "no_dsn1.pth")
    assert "2 missing keys (first: dsn1.weight)" in str(err.value)
    assert "1 unexpected keys (first: dsn2.weight)" in str(err.value)
