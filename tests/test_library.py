"""The plug library: training, content-addressed cache (reuse, resume, corruption) and the plugs table."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import Tensor, nn

import trainable.library as library
from data.errors import InputError
from data.names import KEEP, PLUGS_FILE
from trainable.inventory import convs, measure
from trainable.loaders import kept_in_memory, same_shape_batches
from trainable.library import (
    TABLE_COLUMNS, LibrarySettings, PlugCache, chunk_layers, load_plug, local_errors, plugs_table, teacher_hash,
    teacher_forward_rate, train_plugs,
)
from trainable.ops import make_op, op_params
from trainable.surgery import apply_policy

CPU = torch.device("cpu")
LAYER_OPS = {"body.0": ["keep", "dws", "lowrank4"], "body.3": ["dws", "group2", "bottleneck2"]}
PLUGS = [(layer, op) for layer, ops in LAYER_OPS.items() for op in ops if op != KEEP]
DATA = ("images/train",)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.body = nn.Sequential(
            nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(16, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(self.stem(x)).mean((2, 3)))


def _teacher() -> nn.Module:
    torch.manual_seed(0)
    return Tiny().eval()


def _batches(seed: int, count: int = 4) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, 16, 16, generator=generator) for _ in range(count)]


TRAIN, VAL = _batches(1), _batches(2, 2)


class Loader:
    """An images factory that counts its calls."""

    def __init__(self, batches: list[Tensor]):
        self.batches, self.calls = batches, 0

    def __call__(self) -> list[Tensor]:
        self.calls += 1
        return self.batches


def _settings(tmp_path: Path, **changes) -> LibrarySettings:
    return LibrarySettings(**{"epochs": 2, "lr": 1e-2, "batch_size": 4, "cache": tmp_path / "library", **changes})


def _build(teacher: nn.Module, settings: LibrarySettings, loader=None, log=print, layer_ops=LAYER_OPS) -> dict:
    cache = PlugCache.of(teacher, DATA, settings)
    return train_plugs(teacher, layer_ops, loader or Loader(TRAIN), settings, CPU, cache, progress=False, log=log).paths


def _mtimes(paths) -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in paths}


@pytest.fixture
def trained_keys(monkeypatch) -> list:
    """The (layer, op) keys that train_plugs trains, chunk by chunk."""
    trained: list = []
    original = library._train_chunk

    def spy(teacher, keys, *args):
        trained.extend(keys)
        return original(teacher, keys, *args)

    monkeypatch.setattr(library, "_train_chunk", spy)
    return trained


def test_second_build_trains_nothing(tmp_path: Path) -> None:
    teacher, settings = _teacher(), _settings(tmp_path)
    lines: list[str] = []
    paths = _build(teacher, settings, log=lines.append)
    assert sorted(paths) == sorted(PLUGS) and all(p.is_file() for p in paths.values())
    assert {p.parent for p in paths.values()} == {settings.cache / teacher_hash(teacher)}
    assert len(lines) == 1 and re.fullmatch(r"plug library: trained 5 plugs \(1 chunk\(s\), 2 epoch\(s\) of 16 images\) "
                                            r"in [\d.]+s: [\d.]+ images/s", lines[0]), lines
    before = _mtimes(paths.values())
    loader = Loader(TRAIN)
    assert _build(teacher, settings, loader, log=lines.append) == paths
    assert loader.calls == 0 and _mtimes(paths.values()) == before and len(lines) == 1


def test_teacher_forward_rate_counts_every_image_and_restores_the_mode() -> None:
    teacher = _teacher().train()
    loader = Loader(TRAIN)
    assert teacher_forward_rate(teacher, loader, CPU) > 0
    assert loader.calls == 2 and teacher.training  # one warm-up batch, then one pass


def test_interrupted_build_resumes_with_the_missing_plugs(tmp_path: Path, trained_keys: list) -> None:
    teacher, settings = _teacher(), _settings(tmp_path, max_activation_bytes=1)  # one layer per chunk
    folder = settings.cache / teacher_hash(teacher)

    def killed_after_first_chunk() -> list[Tensor]:
        if folder.is_dir() and any(folder.iterdir()):
            raise KeyboardInterrupt
        return TRAIN

    with pytest.raises(KeyboardInterrupt):
        _build(teacher, settings, killed_after_first_chunk)
    cache = PlugCache.of(teacher, DATA, settings)
    first = [key for key in PLUGS if key[0] == "body.0"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(cache.path(*key).name for key in first)
    before = _mtimes(cache.path(*key) for key in first)
    trained_keys.clear()
    _build(teacher, settings)
    assert sorted(trained_keys) == sorted(key for key in PLUGS if key[0] == "body.3")
    assert _mtimes(cache.path(*key) for key in first) == before


def test_one_fused_step_trains_each_plug_as_its_own_steps_would(tmp_path: Path) -> None:
    teacher = _teacher()
    together = _settings(tmp_path / "together")
    _build(teacher, together)
    alone = _settings(tmp_path / "alone")
    for layer, op in PLUGS:  # each plug in a build of its own: its own optimizer and steps
        _build(teacher, alone, layer_ops={layer: [op]})
    for key in PLUGS:
        fused = load_plug(PlugCache.of(teacher, DATA, together), teacher, *key).state_dict()
        single = load_plug(PlugCache.of(teacher, DATA, alone), teacher, *key).state_dict()
        for name, tensor in fused.items():
            torch.testing.assert_close(tensor, single[name], rtol=1e-5, atol=1e-6)


def test_a_build_without_a_terminal_says_how_far_it_is(tmp_path: Path) -> None:
    teacher, settings = _teacher(), _settings(tmp_path, max_activation_bytes=1)  # one chunk per layer
    lines: list[str] = []
    cache = PlugCache.of(teacher, DATA, settings)
    build = train_plugs(teacher, LAYER_OPS, Loader(TRAIN), settings, CPU, cache, log=lines.append)  # stderr is no tty
    progress = [line for line in lines if line.startswith("plugs ")]
    assert [line.split(":")[0] for line in progress] == [f"plugs {c}/2 epoch {e}/2" for c in (1, 2) for e in (1, 2)]
    assert all(re.search(r"mean local error [\d.]+, [\d.]+s$", line) for line in progress), progress
    assert build.trained == len(PLUGS) and build.images_per_s > 0


def test_a_trained_plug_lowers_its_local_error(tmp_path: Path) -> None:
    teacher, settings = _teacher(), _settings(tmp_path, epochs=3, lr=3e-2)
    _build(teacher, settings)
    cache = PlugCache.of(teacher, DATA, settings)
    named = convs(teacher)
    torch.manual_seed(0)
    initial = {key: make_op(named[key[0]], key[1]) for key in PLUGS}
    trained = {key: load_plug(cache, teacher, *key) for key in PLUGS}
    before, after = local_errors(teacher, initial, Loader(VAL), CPU), local_errors(teacher, trained, Loader(VAL), CPU)
    for key in PLUGS:  # every op starts from the teacher's weights by SVD; training on data brings it closer
        assert after[key] < before[key], (key, before, after)


def test_a_corrupt_cache_file_is_retrained(tmp_path: Path, trained_keys: list) -> None:
    teacher, settings = _teacher(), _settings(tmp_path)
    paths = _build(teacher, settings)
    truncated, garbage, flipped = ("body.0", "dws"), ("body.3", "group2"), ("body.3", "bottleneck2")
    data = paths[truncated].read_bytes()
    paths[truncated].write_bytes(data[: len(data) // 2])
    paths[garbage].write_bytes(b"not a safetensors file" * 10)
    data = bytearray(paths[flipped].read_bytes())
    data[-3] ^= 0xFF  # a tensor byte: the header still parses, the checksum does not match
    paths[flipped].write_bytes(bytes(data))
    cache = PlugCache.of(teacher, DATA, settings)
    for key in (truncated, garbage, flipped):
        with pytest.raises(InputError, match="missing or corrupt"):
            load_plug(cache, teacher, *key)
    trained_keys.clear()
    _build(teacher, settings)
    assert sorted(trained_keys) == sorted([truncated, garbage, flipped])
    for key in PLUGS:
        load_plug(cache, teacher, *key)


def test_cache_key_depends_on_teacher_data_and_training_settings(tmp_path: Path) -> None:
    teacher, settings = _teacher(), _settings(tmp_path)
    base = PlugCache.of(teacher, DATA, settings)
    other_teacher = _teacher()
    with torch.no_grad():
        other_teacher.body[3].weight[0, 0, 0, 0] += 1
    variants = [
        PlugCache.of(other_teacher, DATA, settings),
        PlugCache.of(teacher, ("images/other",), settings),
        PlugCache.of(teacher, DATA, _settings(tmp_path, epochs=3)),
        PlugCache.of(teacher, DATA, _settings(tmp_path, lr=1e-3)),
        PlugCache.of(teacher, DATA, _settings(tmp_path, batch_size=2)),
    ]
    assert len({cache.key("body.3", "dws") for cache in [base, *variants]}) == 6
    assert base.key("body.3", "dws") != base.key("body.3", "group2") != base.key("body.0", "group2")
    same = PlugCache.of(_teacher(), DATA, _settings(tmp_path, max_activation_bytes=1))
    assert same.key("body.3", "dws") == base.key("body.3", "dws")
    with pytest.raises(ValueError, match="differ"):
        train_plugs(teacher, LAYER_OPS, Loader(TRAIN), _settings(tmp_path, epochs=1), CPU, base, progress=False)


def test_chunks_stay_under_the_budget() -> None:
    sizes = {"a": 4, "b": 3, "c": 5, "d": 9, "e": 1}
    assert chunk_layers(sizes, 8) == [["a", "b"], ["c"], ["d"], ["e"]]
    assert chunk_layers(sizes, 100) == [list(sizes)]


def test_plugs_table(tmp_path: Path) -> None:
    teacher, settings = _teacher(), _settings(tmp_path)
    _build(teacher, settings)
    cache = PlugCache.of(teacher, DATA, settings)
    reference = torch.cat([teacher(image) for image in VAL]).argmax(1)
    calls: list[int] = []

    def logits(model: nn.Module, images: Tensor) -> Tensor:
        return model(images)

    def agreement(model: nn.Module) -> float:
        calls.append(1)
        with torch.no_grad():
            return (torch.cat([model(image) for image in VAL]).argmax(1) == reference).float().mean().item()

    table = plugs_table(teacher, LAYER_OPS, Loader(VAL), agreement, logits, CPU, cache)
    assert list(table.columns) == TABLE_COLUMNS
    assert sorted(zip(table.layer, table.op)) == sorted(PLUGS) and len(table) == len(PLUGS)
    assert len(calls) == 1 + len(PLUGS)
    assert (table.solo_drop == 1.0 - table.solo_score).all()  # the teacher agrees with itself
    assert ((table.local_error >= 0) & (table.solo_score <= 1)).all()
    assert ((table.solo_kl >= 0) & (table.solo_disagreement >= 0)).all()
    assert table.solo_disagreement.tolist() == pytest.approx(table.solo_drop.tolist())  # both: the argmax changes
    named = convs(teacher)
    for row in table.itertuples():
        assert row.params == op_params(named[row.layer], row.op)
        student = apply_policy(teacher, {row.layer: row.op})
        per_conv = measure(student, (16, 16))[1]
        assert row.flops == sum(f for name, f in per_conv.items() if name.startswith(row.layer + "."))
    stored = pd.read_parquet(cache.folder / PLUGS_FILE)
    assert len(stored) == len(PLUGS)
    calls.clear()
    again = plugs_table(teacher, LAYER_OPS, Loader(VAL), agreement, logits, CPU, cache)
    assert calls == [] and again.equals(table)
    assert not list(cache.folder.glob(f".{PLUGS_FILE}.*"))
    other_data = PlugCache.of(teacher, ("images/other",), settings)  # same folder, other keys
    train_plugs(teacher, {"body.3": ["dws"]}, Loader(TRAIN), settings, CPU, other_data, progress=False)
    replaced = plugs_table(teacher, {"body.3": ["dws"]}, Loader(VAL), agreement, logits, CPU, other_data)
    assert list(replaced.key) == [other_data.key("body.3", "dws")]
    stored = pd.read_parquet(cache.folder / PLUGS_FILE)
    assert sorted(zip(stored.layer, stored.op)) == sorted(PLUGS)  # still one row per (layer, op)
    assert set(stored.key) == set(table.key) - {cache.key("body.3", "dws")} | {other_data.key("body.3", "dws")}


def test_scoring_batches_join_consecutive_images_of_one_shape_up_to_the_size():
    # The library scores every plug over the val split: a segmentation val loader yields one image at a time.
    shapes = [(8, 16)] * 5 + [(12, 16)] * 2 + [(8, 16)]
    batches = [(torch.full((1, 3, h, w), float(i)), torch.full((1, h, w), i)) for i, (h, w) in enumerate(shapes)]
    joined = list(same_shape_batches(batches, 3))
    assert [tuple(images.shape) for images, _ in joined] == [(3, 3, 8, 16), (2, 3, 8, 16), (2, 3, 12, 16), (1, 3, 8, 16)]
    assert torch.cat([masks[:, 0, 0] for _, masks in joined]).tolist() == list(range(len(shapes)))  # order kept


def test_scoring_batches_are_kept_in_memory_only_when_they_fit():
    reads = []

    def batches():
        reads.append(1)
        return iter([(torch.zeros(2, 3, 4, 4),), (torch.ones(2, 3, 4, 4),)])  # 384 bytes each

    kept = kept_in_memory(batches, 1000)
    assert [float(b[0].sum()) for _ in range(3) for b in kept()] == [0.0, 96.0] * 3 and len(reads) == 1
    reads.clear()
    streamed = kept_in_memory(batches, 500)
    assert streamed is batches and [float(b[0].sum()) for b in streamed()] == [0.0, 96.0]
