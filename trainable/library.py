"""The plug library of a teacher: every (layer, op) plug trained alone to reproduce its teacher conv, cached by content.

Training (`train_plugs`): one teacher forward per batch (eval mode, no grad) feeds every plug at
once. Forward hooks capture each conv's input and output (cloned, so an in-place op later in the
teacher cannot change them); each plug starts from its op's data-free initialisation from the
teacher's weights (`trainable.ops`), and the sum over plugs of the normalised MSE between a plug's
output on the captured input and the captured output takes one backward and one foreach AdamW step
(cosine schedule) per batch: the losses are independent, so each plug gets its own gradient. A conv
called more than once per forward trains on its last call. Without a terminal, one line per epoch
says how far the build is.

Memory: the captured input+output of every layer of a batch must fit in
`LibrarySettings.max_activation_bytes`. Their sizes come from a probe of the first batch's shape
through the teacher on the meta device (a real forward of that batch where the model cannot run on
meta tensors); the layers are then split greedily, in the teacher's conv order, into chunks whose
sum stays under the budget (a layer larger than the budget alone is a chunk of its own). Each chunk
is trained over all epochs before the next, so every chunk after the first costs one more teacher
pass per batch. Beyond the budget, peak memory is the teacher's own forward plus one plug's graph.

Cache (`PlugCache`): `<cache>/<teacher_hash>/<key>.safetensors`, one file per plug, where the key
is a hash of the teacher hash, layer, op, the strings naming the training data and the settings
that change training (epochs, lr, batch_size). A plug is written atomically as soon as it is
trained (those of one chunk at the end of that chunk), so an interrupted build keeps what it
finished; a file that does not load, whose metadata names another plug, whose tensors have other
names or shapes, or whose bytes fail the stored checksum is retrained, never loaded.

On CUDA the teacher and plugs run under bf16 autocast in channels_last.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from data.errors import InputError
from data.files import write_bytes_atomic
from data.names import KEEP, PLUGS_FILE
from data.schema import setting
from trainable.inventory import convs
from trainable.losses import agreement, kd_loss
from trainable.modes import in_mode
from trainable.ops import Plug, check_op, make_op, op_params
from trainable.precision import autocast

PlugKey = tuple[str, str]
Images = Callable[[], Iterable[Any]]
ScoreFn = Callable[[nn.Module], float]
LogitsFn = Callable[[nn.Module, Tensor], Tensor]

_FORMAT = 2  # bump when the plug training or file layout changes: old files then stop matching
TABLE_COLUMNS = ["key", "layer", "op", "params", "flops", "local_error", "solo_score", "solo_drop", "solo_kl",
                 "solo_disagreement"]


@dataclass(frozen=True)
class LibrarySettings:
    """How plugs are trained and where they are kept.

    `max_activation_bytes` (4 GiB) bounds the captured conv inputs+outputs of one batch: on a 16 GB
    GPU it leaves room for the teacher's own forward and one plug's graph. For scale, the full-width
    DeepWV3Plus at 768x768 captures 4.8 GiB per image over its 53 convs (fp32, 0.3 GiB for its
    largest conv), 1.7 GiB for the 27 convs of mod4-mod7 and ASPP: at batch 2 that is one chunk
    for those, three for every conv.
    """

    epochs: int = setting("epochs each plug trains alone", 2, low=1)
    lr: float = setting("learning rate of the plugs (AdamW, cosine schedule)", 1e-3, above=0)
    batch_size: int | None = setting("images per batch of the teacher's forward that feeds every plug; null: "
                                     "data.batch_size", None, low=1)
    cache: Path = setting("where trained plugs are kept, by teacher hash; shared by searches",
                          Path("checkpoints/library"))
    max_activation_bytes: int = setting("bound on one batch's captured conv inputs and outputs", 4 * 2**30, low=1)

    def training_fields(self) -> dict[str, Any]:
        """The settings that change a trained plug (and so its cache key)."""
        return {"epochs": self.epochs, "lr": self.lr, "batch_size": self.batch_size}


def teacher_hash(teacher: nn.Module) -> str:
    """sha256 over the state_dict's names, shapes, dtypes and bytes, one tensor at a time."""
    digest = hashlib.sha256()
    for name, tensor in teacher.state_dict().items():
        tensor = tensor.detach()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}\n".encode())
        digest.update(_raw_bytes(tensor))
    return digest.hexdigest()


def _raw_bytes(tensor: Tensor) -> memoryview:
    return memoryview(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())


def _checksum(tensors: Mapping[str, Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(_raw_bytes(tensors[name]))
    return digest.hexdigest()


@dataclass(frozen=True)
class PlugCache:
    """The plugs of one teacher trained on one data set with one set of training settings."""

    root: Path
    teacher: str
    data: tuple[str, ...]
    settings: LibrarySettings

    @classmethod
    def of(cls, teacher: nn.Module, data: Sequence[str], settings: LibrarySettings) -> PlugCache:
        """The cache of `teacher` (hashed once here) under `settings.cache`; `data` names the training images (folders)."""
        return cls(Path(settings.cache), teacher_hash(teacher), tuple(str(d) for d in data), settings)

    @property
    def folder(self) -> Path:
        return self.root / self.teacher

    def key(self, layer: str, op: str) -> str:
        fields = {"format": _FORMAT, "teacher": self.teacher, "layer": layer, "op": op, "data": list(self.data),
                  **self.settings.training_fields()}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]

    def path(self, layer: str, op: str) -> Path:
        return self.folder / f"{self.key(layer, op)}.safetensors"

    def save(self, layer: str, op: str, plug: Plug) -> Path:
        """Write the plug's weights with their metadata and checksum, atomically."""
        tensors = {name: t.detach().cpu().contiguous() for name, t in plug.state_dict().items()}
        metadata = {"key": self.key(layer, op), "layer": layer, "op": op, "teacher": self.teacher,
                    "data": json.dumps(list(self.data)), "settings": json.dumps(self.settings.training_fields()),
                    "sha256": _checksum(tensors)}
        path = self.path(layer, op)
        write_bytes_atomic(path, safetensors_bytes(tensors, metadata))
        return path

    def read(self, layer: str, op: str, conv: nn.Conv2d) -> dict[str, Tensor] | None:
        """The stored weights of (layer, op) for `conv`, or None when missing or not exactly what was written."""
        path = self.path(layer, op)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        except Exception:  # safetensors raises several types (SafetensorError, OSError, ...) for bad files
            return None
        expected = {name: tuple(t.shape) for name, t in _blank_plug(conv, op).state_dict().items()}
        if (
            (metadata.get("key"), metadata.get("layer"), metadata.get("op")) != (self.key(layer, op), layer, op)
            or {name: tuple(t.shape) for name, t in tensors.items()} != expected
            or metadata.get("sha256") != _checksum(tensors)
        ):
            return None
        return tensors


def _meta_twin(conv: nn.Conv2d) -> nn.Conv2d:
    """A conv with `conv`'s settings on the meta device (so make_op skips the SVD)."""
    return nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                     conv.groups, conv.bias is not None, conv.padding_mode, device="meta", dtype=conv.weight.dtype)


def _blank_plug(conv: nn.Conv2d, op: str) -> Plug:
    return make_op(_meta_twin(conv), op)


def load_plug(cache: PlugCache, teacher: nn.Module, layer: str, op: str) -> Plug:
    """The trained plug of (layer, op) from the library, on the teacher conv's device; InputError if not there."""
    conv = _conv_of(teacher, layer, op)
    tensors = cache.read(layer, op, conv)
    if tensors is None:
        raise InputError(f"{cache.path(layer, op)}: plug {op!r} of layer {layer!r} is missing or corrupt; "
                         "expected it built by train_plugs (python search/library.py)")
    plug = _blank_plug(conv, op).to_empty(device=conv.weight.device)
    plug.load_state_dict(tensors)
    return plug.train(conv.training)


def policy_plugs(cache: PlugCache, teacher: nn.Module, policy: Mapping[str, str]) -> dict[str, dict[str, Tensor]]:
    """The library's trained weights of every plug of `policy` (`{layer: op}`); InputError naming a missing one."""
    states = {}
    for layer, op in policy.items():
        if op == KEEP:
            continue
        state = cache.read(layer, op, _conv_of(teacher, layer, op))
        if state is None:
            raise InputError(f"{cache.path(layer, op)}: plug {op!r} of layer {layer!r} is missing from the library; "
                             "expected it built by python search/library.py")
        states[layer] = state
    return states


def _conv_of(teacher: nn.Module, layer: str, op: str) -> nn.Conv2d:
    conv = convs(teacher).get(layer)
    if conv is None:
        raise InputError(f"library layer {layer!r} (op {op!r}): not a Conv2d of the teacher")
    check_op(conv, op)
    return conv


def _wanted(teacher: nn.Module, layer_ops: Mapping[str, Sequence[str]]) -> list[PlugKey]:
    """Every (layer, op) but keep, in the teacher's conv order; InputError for one that does not fit."""
    order = {name: i for i, name in enumerate(convs(teacher))}
    keys = [(layer, op) for layer, ops in layer_ops.items() for op in dict.fromkeys(ops) if op != KEEP]
    for layer, op in keys:
        _conv_of(teacher, layer, op)
    return sorted(keys, key=lambda key: order[key[0]])


def normalised_mse(output: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over the variance of `target` (1 = as good as predicting its mean)."""
    target = target.float()
    return (output.float() - target).pow(2).mean() / target.var(correction=0).clamp_min(1e-12)


def _image(batch: Any) -> Tensor:
    """The image tensor of a batch: the batch itself, or the first item of an (image, target, ...) batch."""
    return batch if isinstance(batch, Tensor) else batch[0]


def _to_device(images: Tensor, device: torch.device) -> Tensor:
    images = images.to(device, non_blocking=True).float()
    return images.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else images


def _prepare(module: nn.Module, device: torch.device) -> nn.Module:
    module.to(device)
    return module.to(memory_format=torch.channels_last) if device.type == "cuda" else module


@contextlib.contextmanager
def _hooks(named: Mapping[str, nn.Module], layers: Iterable[str], make: Callable[[str], Callable]) -> Iterator[None]:
    handles = [named[layer].register_forward_hook(make(layer)) for layer in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _nbytes(tensor: Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def probe(teacher: nn.Module, images: Tensor, layers: Sequence[str], device: torch.device) -> dict[str, tuple[tuple[int, ...], int]]:
    """Per layer: the conv's input shape and its captured input+output bytes for this batch of images.

    Runs on the meta device (shapes only, instant); a teacher that cannot run on meta tensors gets
    one real forward of the batch instead.
    """
    named = convs(teacher)
    found: dict[str, tuple[tuple[int, ...], int]] = {}

    def make(layer: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            found[layer] = (tuple(args[0].shape), _nbytes(args[0]) + _nbytes(output))

        return hook

    with in_mode(teacher, training=False), _hooks(named, layers, make), torch.no_grad():
        try:
            tensors = {n: torch.empty_like(t, device="meta") for n, t in teacher.named_parameters(remove_duplicate=False)}
            tensors |= {n: torch.empty_like(t, device="meta") for n, t in teacher.named_buffers(remove_duplicate=False)}
            functional_call(teacher, tensors, (images.to("meta").float(),))
        except (NotImplementedError, RuntimeError):
            found.clear()
            with autocast(device):
                teacher(_to_device(images, device))
    missing = [layer for layer in layers if layer not in found]
    if missing:
        raise InputError(f"library layer {missing[0]!r}: the teacher's forward never runs it")
    return found


def chunk_layers(sizes: Mapping[str, int], budget: int) -> list[list[str]]:
    """Consecutive layers (in the mapping's order) grouped greedily so each group's bytes stay under `budget`."""
    chunks: list[list[str]] = []
    total = 0
    for layer, size in sizes.items():
        if not chunks or total + size > budget:
            chunks.append([])
            total = 0
        chunks[-1].append(layer)
        total += size
    return chunks


def _first_batch(images: Images) -> Tensor:
    for batch in images():
        return _image(batch)
    raise InputError("plug library: the image loader yields no batches; expected at least one")


def _batches_per_epoch(images: Images) -> int:
    """len() of the loader when it has one, otherwise one pass over it to count."""
    loader = images()
    return len(loader) if hasattr(loader, "__len__") else sum(1 for _ in loader)


def _cosine(total: int) -> Callable[[int], float]:
    return lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


def _new_plug(conv: nn.Conv2d, op: str, seed: int, device: torch.device) -> Plug:
    """make_op with its random initialisation seeded by the plug's cache key (the same plug whatever the chunking)."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        plug = make_op(conv, op)
    return _prepare(plug, device).train()


def _capture(store: dict[str, tuple[Tensor, Tensor]]) -> Callable[[str], Callable]:
    def make(layer: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            store[layer] = (args[0].detach().clone(), output.detach().clone())

        return hook

    return make


def _say(line: str) -> None:
    print(line, flush=True)


def _train_chunk(
    teacher: nn.Module, keys: Sequence[PlugKey], images: Images, cache: PlugCache, device: torch.device,
    batches: int, progress: Callable[[str], None] | None, label: str,
) -> tuple[dict[PlugKey, Plug], int]:
    """Train the plugs of one chunk of layers together over all epochs: one teacher pass per batch.

    The plugs' losses are independent, so the gradient of their sum is each plug's own: one backward and one
    (foreach) AdamW step per batch train them all. Returns the plugs and how many images went through the teacher.
    """
    named = convs(teacher)
    settings = cache.settings
    plugs = {(layer, op): _new_plug(named[layer], op, int(cache.key(layer, op)[:15], 16), device) for layer, op in keys}
    optimizer = torch.optim.AdamW([p for plug in plugs.values() for p in plug.parameters()], lr=settings.lr,
                                  foreach=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(settings.epochs * batches))
    captured: dict[str, tuple[Tensor, Tensor]] = {}
    seen = 0
    with _hooks(named, dict.fromkeys(layer for layer, _ in keys), _capture(captured)):
        for epoch in range(settings.epochs):
            title = f"plugs {label} epoch {epoch + 1}/{settings.epochs}"
            bar = tqdm(images(), total=batches, desc=title, disable=progress is None or not sys.stderr.isatty(),
                       leave=False)
            started, total = time.perf_counter(), torch.zeros((), device=device)
            for batch in bar:
                image = _to_device(_image(batch), device)
                with torch.no_grad(), autocast(device):
                    teacher(image)
                seen += image.shape[0]
                with autocast(device):
                    loss = sum(normalised_mse(plug(captured[layer][0]), captured[layer][1])
                               for (layer, _), plug in plugs.items())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.detach()
                captured.clear()
            if progress is not None and not sys.stderr.isatty():
                progress(f"{title}: mean local error {total.item() / max(1, batches) / len(plugs):.4f}, "
                         f"{time.perf_counter() - started:.1f}s")
    return plugs, seen


@dataclass(frozen=True)
class PlugBuild:
    """What `train_plugs` did: the cache file of every wanted plug, how many it trained, and at what rate."""

    paths: dict[PlugKey, Path]
    trained: int = 0
    images_per_s: float | None = None  # images per epoch times epochs over the training seconds; None: nothing trained


def train_plugs(
    teacher: nn.Module, layer_ops: Mapping[str, Sequence[str]], images: Images, settings: LibrarySettings,
    device: torch.device, cache: PlugCache, progress: bool = True, log: Callable[[str], None] = _say,
) -> PlugBuild:
    """Train every (layer, op) plug but keep that the cache lacks; returns the cache files and the build's rate.

    `images()` returns one epoch of batches (tensors, or tuples whose first item is the image
    tensor) of `settings.batch_size` images; it is called once per epoch per chunk, plus once to
    probe the first batch's shape (and once to count batches if it has no len()). The teacher is
    moved to `device` (channels_last on CUDA); its train/eval modes are restored on return. `settings`
    must be the ones `cache` was made with (ValueError otherwise). When it trained something, `log`
    gets one line with the build's rate: images per epoch times epochs over the training seconds
    (at most `teacher_forward_rate`, the rate of one teacher forward per image per epoch).
    """
    if settings.training_fields() != cache.settings.training_fields():
        raise ValueError(f"train_plugs: settings {settings.training_fields()} differ from the cache's "
                         f"{cache.settings.training_fields()}")
    device = torch.device(device)
    wanted = _wanted(teacher, layer_ops)
    named = convs(teacher)
    todo = [(layer, op) for layer, op in wanted if cache.read(layer, op, named[layer]) is None]
    paths = {key: cache.path(*key) for key in wanted}
    if not todo:
        return PlugBuild(paths)
    _prepare(teacher, device)
    with in_mode(teacher, training=False):
        layers = list(dict.fromkeys(layer for layer, _ in todo))
        sizes = probe(teacher, _first_batch(images), layers, device)
        chunks = chunk_layers({layer: sizes[layer][1] for layer in layers}, settings.max_activation_bytes)
        batches = _batches_per_epoch(images)
        started, seen = time.perf_counter(), 0
        for i, chunk in enumerate(chunks):
            keys = [key for key in todo if key[0] in chunk]
            plugs, images_seen = _train_chunk(teacher, keys, images, cache, device, batches, log if progress else None,
                                              f"{i + 1}/{len(chunks)}")
            seen += images_seen
            for (layer, op), plug in plugs.items():
                cache.save(layer, op, plug)
        seconds = time.perf_counter() - started
    per_epoch = seen // (len(chunks) * settings.epochs)
    rate = settings.epochs * per_epoch / seconds
    log(f"plug library: trained {len(todo)} plugs ({len(chunks)} chunk(s), {settings.epochs} epoch(s) of {per_epoch} "
        f"images) in {seconds:.1f}s: {rate:.1f} images/s")
    return PlugBuild(paths, len(todo), rate)


@torch.no_grad()
def teacher_forward_rate(teacher: nn.Module, images: Images, device: torch.device) -> float:
    """Images/s of one pass of `images()` through the teacher alone, as `train_plugs` runs it (eval mode, no grad,
    autocast and channels_last on CUDA), after one warm-up batch: the ceiling of a build's rate."""
    device = torch.device(device)
    _prepare(teacher, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    with in_mode(teacher, training=False), autocast(device):
        teacher(_to_device(_first_batch(images), device))
        sync()
        started, seen = time.perf_counter(), 0
        for batch in images():
            image = _to_device(_image(batch), device)
            teacher(image)
            seen += image.shape[0]
        sync()
    return seen / (time.perf_counter() - started)


@torch.no_grad()
def local_errors(teacher: nn.Module, plugs: Mapping[PlugKey, Plug], images: Images, device: torch.device) -> dict[PlugKey, float]:
    """Each plug's normalised MSE against its teacher conv, averaged over images; one teacher forward per batch.

    Every plug runs inside its conv's forward hook and nothing is kept, so memory stays at the
    teacher's forward whatever the number of plugs.
    """
    device = torch.device(device)
    named = convs(teacher)
    by_layer: dict[str, list[PlugKey]] = {}
    for key in plugs:
        by_layer.setdefault(key[0], []).append(key)
    totals = dict.fromkeys(plugs, 0.0)
    seen = 0

    def make(layer: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            for key in by_layer[layer]:
                totals[key] += normalised_mse(plugs[key](args[0]), output).item() * args[0].shape[0]

        return hook

    with in_mode(teacher, training=False), _hooks(named, by_layer, make), autocast(device):
        for batch in images():
            image = _to_device(_image(batch), device)
            teacher(image)
            seen += image.shape[0]
    if not seen:
        raise InputError("plug library: the validation loader yields no images; expected at least one")
    return {key: total / seen for key, total in totals.items()}


@torch.no_grad()
def solo_divergences(teacher: nn.Module, plugs: Mapping[PlugKey, Plug], images: Images, logits: LogitsFn,
                     device: torch.device) -> dict[PlugKey, tuple[float, float]]:
    """Per plug, how far the teacher with only that plug in moves from the teacher, averaged over images: the
    KL divergence of its output distribution from the teacher's (per pixel for segmentation), and the share of
    outputs whose argmax changes. One teacher forward per batch, then one per plug."""
    device = torch.device(device)
    totals = {key: torch.zeros(2, dtype=torch.float64, device=device) for key in plugs}
    seen = 0
    with in_mode(teacher, training=False), autocast(device):
        for batch in images():
            image = _to_device(_image(batch), device)
            reference = logits(teacher, image).float()
            for (layer, op), plug in plugs.items():
                with plugged(teacher, layer, plug) as student:
                    output = logits(student, image).float()
                totals[(layer, op)] += image.shape[0] * torch.stack(
                    [kd_loss(output, reference, 1.0), 1 - agreement(output, reference)]).double()
            seen += image.shape[0]
    if not seen:
        raise InputError("plug library: the validation loader yields no images; expected at least one")
    return {key: tuple((total / seen).tolist()) for key, total in totals.items()}


def plug_flops(conv: nn.Conv2d, op: str, input_shape: Sequence[int]) -> int:
    """FLOPs of the plug alone on one image of its conv's input shape (C, H, W), counted on the meta device."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        _blank_plug(conv, op)(torch.empty(1, *input_shape[-3:], device="meta", dtype=conv.weight.dtype))
    return counter.get_total_flops()


@contextlib.contextmanager
def plugged(teacher: nn.Module, layer: str, plug: nn.Module) -> Iterator[nn.Module]:
    """The teacher with `plug` in place of `layer` (swapped in place, no copy of the teacher), restored on exit."""
    parent_name, _, child = layer.rpartition(".")
    parent = teacher.get_submodule(parent_name)
    original = getattr(parent, child)
    setattr(parent, child, plug)
    try:
        yield teacher
    finally:
        setattr(parent, child, original)


def _read_table(path: Path) -> pd.DataFrame:
    """The stored table, or an empty one when it is missing, unreadable or has other columns."""
    try:
        table = pd.read_parquet(path)
    except (OSError, ValueError):
        return pd.DataFrame(columns=TABLE_COLUMNS)
    return table if list(table.columns) == TABLE_COLUMNS else pd.DataFrame(columns=TABLE_COLUMNS)


def plugs_table(
    teacher: nn.Module, layer_ops: Mapping[str, Sequence[str]], val_images: Images, score_fn: ScoreFn,
    logits: LogitsFn, device: torch.device, cache: PlugCache,
) -> pd.DataFrame:
    """The rows of every (layer, op) plug (trained, in the cache), also written to `<cache folder>/plugs.parquet`.

    Columns: `key` (the plug's file stem), `layer`, `op`, `params` (op_params), `flops` (the plug
    alone on one image at its conv's input shape for the first val batch's image size),
    `local_error` (normalised MSE on the val images), `solo_score` (`score_fn` of the teacher with
    only this plug in, untrained further), `solo_drop` (`score_fn(teacher)` minus `solo_score`),
    `solo_kl` and `solo_disagreement` (`solo_divergences` over the val images, outputs read by `logits`).
    The file holds one row per (layer, op): rows already there with the same key are reused, not
    recomputed; a row of a requested (layer, op) with another key (other data or settings) is
    replaced; rows of other (layer, op) stay. The score function is taken as fixed per cache
    folder: delete the file to rescore.
    """
    device = torch.device(device)
    path = cache.folder / PLUGS_FILE
    wanted = _wanted(teacher, layer_ops)
    table = _read_table(path)
    known_keys = {cache.key(layer, op) for layer, op in wanted} & set(table["key"])
    todo = [(layer, op) for layer, op in wanted if cache.key(layer, op) not in known_keys]
    if todo:
        named = convs(teacher)
        _prepare(teacher, device)
        plugs = {(layer, op): load_plug(cache, teacher, layer, op) for layer, op in todo}
        for plug in plugs.values():
            _prepare(plug, device)
        with in_mode(teacher, training=False):
            errors = local_errors(teacher, plugs, val_images, device)
            divergences = solo_divergences(teacher, plugs, val_images, logits, device)
            first = _first_batch(val_images)[:1]
            shapes = probe(teacher, first, list(dict.fromkeys(layer for layer, _ in todo)), device)
            teacher_score = float(score_fn(teacher))
            rows = []
            for (layer, op), plug in plugs.items():
                with plugged(teacher, layer, plug.eval()) as student:
                    solo = float(score_fn(student))
                rows.append({
                    "key": cache.key(layer, op), "layer": layer, "op": op, "params": op_params(named[layer], op),
                    "flops": plug_flops(named[layer], op, shapes[layer][0]), "local_error": errors[(layer, op)],
                    "solo_score": solo, "solo_drop": teacher_score - solo,
                    "solo_kl": divergences[(layer, op)][0], "solo_disagreement": divergences[(layer, op)][1],
                })
        requested = set(wanted)
        kept = table[[key in known_keys or (layer, op) not in requested
                      for key, layer, op in zip(table["key"], table["layer"], table["op"])]]
        new = pd.DataFrame(rows, columns=TABLE_COLUMNS)
        table = new if kept.empty else pd.concat([kept, new], ignore_index=True)
        buffer = io.BytesIO()
        table.to_parquet(buffer, index=False)
        write_bytes_atomic(path, buffer.getvalue())
    keys = [cache.key(layer, op) for layer, op in wanted]
    return table.set_index("key").loc[keys].reset_index()[TABLE_COLUMNS]
