"""Synthetic data for tests and the CPU demo.

Street scenes in the official Cityscapes layout (`--layout cityscapes`, the default) or as a CamVid-like tree
of image/mask pairs (`--layout pairs`), and shape images in the ImageFolder layout (`--layout imagefolder`).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from data.errors import InputError, run_cli
from data.labels import NUM_CLASSES, train_to_label_lut

(ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY,
 PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE) = range(NUM_CLASSES)

EGO_VEHICLE_LABEL_ID = 1
CITIES = {
    "train": ("aachen", "bochum", "bremen"),
    "val": ("frankfurt", "lindau", "munster"),
    "train_extra": ("augsburg", "bamberg"),
}
_SPLIT_CODE = {"train": 0, "val": 1, "train_extra": 2}
_MIN_SIZE = 32

# Per class: base colour, accent colour, texture pattern, pattern period in pixels.
APPEARANCE: dict[int, tuple[tuple[int, int, int], tuple[int, int, int], str, float]] = {
    ROAD: ((82, 80, 88), (110, 106, 116), "blotch", 4),
    SIDEWALK: ((196, 150, 184), (140, 100, 130), "grid", 8),
    BUILDING: ((136, 102, 80), (58, 60, 84), "windows", 10),
    WALL: ((214, 200, 146), (156, 146, 104), "bricks", 6),
    FENCE: ((156, 124, 70), (70, 54, 28), "crosshatch", 6),
    POLE: ((176, 176, 188), (110, 110, 122), "vstripes", 3),
    LIGHT: ((36, 36, 28), (244, 204, 40), "dots", 6),
    SIGN: ((236, 224, 24), (204, 30, 30), "checker", 3),
    VEGETATION: ((58, 142, 40), (18, 78, 22), "blotch", 2),
    TERRAIN: ((164, 184, 92), (126, 148, 58), "hstripes", 3),
    SKY: ((118, 168, 232), (214, 228, 252), "gradient", 1),
    PERSON: ((224, 40, 72), (120, 18, 40), "vstripes", 4),
    RIDER: ((250, 112, 20), (160, 58, 10), "hstripes", 4),
    CAR: ((30, 42, 172), (124, 134, 224), "diagonal", 6),
    TRUCK: ((20, 96, 92), (8, 40, 40), "hstripes", 8),
    BUS: ((204, 60, 204), (100, 20, 100), "vstripes", 8),
    TRAIN: ((60, 204, 204), (20, 120, 120), "checker", 6),
    MOTORCYCLE: ((104, 20, 144), (204, 154, 232), "antidiagonal", 4),
    BICYCLE: ((124, 62, 30), (234, 172, 120), "checker", 2),
}
_EGO_APPEARANCE = ((46, 46, 50), (70, 70, 76), "gradient", 1)


def _pattern(kind: str, y: np.ndarray, x: np.ndarray, period: float, phase: np.ndarray,
             smooth: np.ndarray | None, height: int) -> np.ndarray:
    """Weights in [0, 1] mixing a class's base and accent colours at pixels (y, x)."""
    py, px = y + phase[0] * period, x + phase[1] * period
    tau = 2 * np.pi / period
    if kind == "blotch":
        return smooth
    if kind == "grid":
        return ((py % period < 1) | (px % period < 1)).astype(np.float32)
    if kind == "windows":
        return ((py % period > period * 0.3) & (px % period > period * 0.35)).astype(np.float32)
    if kind == "bricks":
        row = np.floor(py / period)
        return ((py % period < 1) | ((px + row * period) % (2 * period) < 1)).astype(np.float32)
    if kind == "crosshatch":
        return (((px + py) % period < 1.2) | ((px - py) % period < 1.2)).astype(np.float32)
    if kind == "dots":
        return (((py % period) - period / 2) ** 2 + ((px % period) - period / 2) ** 2 < (period / 3) ** 2).astype(
            np.float32)
    if kind == "checker":
        return ((np.floor(py / period) + np.floor(px / period)) % 2).astype(np.float32)
    if kind == "vstripes":
        return 0.5 + 0.5 * np.sin(tau * px)
    if kind == "hstripes":
        return 0.5 + 0.5 * np.sin(tau * py)
    if kind == "diagonal":
        return 0.5 + 0.5 * np.sin(tau * (px + py) / 1.4)
    if kind == "antidiagonal":
        return 0.5 + 0.5 * np.sin(tau * (px - py) / 1.4)
    if kind == "gradient":
        return y / height
    raise ValueError(f"unknown pattern {kind}")


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Bilinearly upsampled uniform noise in [0, 1]: a blotchy texture."""
    coarse = rng.random((height // cell + 2, width // cell + 2), dtype=np.float32)
    image = Image.fromarray(coarse, mode="F").resize((width + 2 * cell, height + 2 * cell), Image.BILINEAR)
    return np.asarray(image)[cell:cell + height, cell:cell + width]


def render(train_ids: np.ndarray, ego: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Paint an (H, W) trainId map as an RGB uint8 image: class colour, class texture, noise."""
    height, width = train_ids.shape
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    smooth = {cell: _smooth_noise(rng, height, width, cell) for cell in (2, 4)}
    phase = rng.random(2)
    rgb = np.zeros((height, width, 3), dtype=np.float32)
    regions = [(APPEARANCE[c], (train_ids == c) & ~ego) for c in range(NUM_CLASSES)] + [(_EGO_APPEARANCE, ego)]
    for (base, accent, kind, period), where in regions:
        if not where.any():
            continue
        blotches = smooth[int(period)][where] if kind == "blotch" else None
        weight = _pattern(kind, y[where], x[where], period, phase, blotches, height)
        base_rgb, accent_rgb = np.asarray(base, np.float32), np.asarray(accent, np.float32)
        rgb[where] = base_rgb + weight[:, None] * (accent_rgb - base_rgb)
    rgb *= rng.uniform(0.85, 1.15)
    rgb += rng.normal(0.0, 7.0, rgb.shape).astype(np.float32)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


class _Scene:
    """A street seen from the road: a vanishing point at the horizon, objects scaled by depth."""

    def __init__(self, rng: np.random.Generator, height: int, width: int) -> None:
        self.rng, self.h, self.w = rng, height, width
        self.canvas = Image.new("L", (width, height), SKY)
        self.draw = ImageDraw.Draw(self.canvas)
        self.horizon = rng.uniform(0.35, 0.5) * height
        self.vx = rng.uniform(0.35, 0.65) * width
        self.road = (self.vx - rng.uniform(0.25, 0.45) * width, self.vx + rng.uniform(0.25, 0.45) * width)
        self.side = (self.road[0] - rng.uniform(0.15, 0.35) * width, self.road[1] + rng.uniform(0.15, 0.35) * width)

    def depth(self, y: float) -> float:
        """0 at the horizon, 1 at the bottom row."""
        return (y - self.horizon) / (self.h - self.horizon)

    def edge(self, bottom_x: float, y: float) -> float:
        """x at row y of the ground line through the vanishing point and (bottom_x, bottom row)."""
        return self.vx + (bottom_x - self.vx) * self.depth(y)

    def ground_row(self, near: float = 0.15, far: float = 1.0) -> float:
        """A random row below the horizon whose depth lies in [near, far]."""
        return self.horizon + self.rng.uniform(near, far) * (self.h - self.horizon)

    def rect(self, x0: float, y0: float, x1: float, y1: float, cls: int) -> None:
        """A filled rectangle at least one pixel wide and tall."""
        x0, x1 = sorted((x0, x1))
        y0, y1 = sorted((y0, y1))
        self.draw.rectangle([x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)], fill=cls)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, cls: int, outline: float = 0) -> None:
        """A filled ellipse, or a ring `outline` pixels thick, at least one pixel across."""
        rx, ry = max(rx, 0.6), max(ry, 0.6)
        box = [cx - rx, cy - ry, cx + rx, cy + ry]
        if outline:
            self.draw.ellipse(box, outline=cls, width=max(1, round(outline)))
        else:
            self.draw.ellipse(box, fill=cls)

    def line(self, points: list[tuple[float, float]], cls: int, width: float) -> None:
        self.draw.line(points, fill=cls, width=max(1, round(width)))

    def layout(self, want: set[int]) -> None:
        """Sky, skyline, ground planes, walls, fences and trees; optional parts appear when wanted."""
        rng, h, w = self.rng, self.h, self.w
        self.rect(0, self.horizon - 0.1 * h, w, h, BUILDING)
        x = -rng.uniform(0, 0.1) * w
        while x < w:
            block = rng.uniform(0.08, 0.25) * w
            if rng.random() < 0.8:
                self.rect(x, rng.uniform(0.05, 0.85) * self.horizon, x + block, h, BUILDING)
            x += block
        for _ in range(rng.integers(0, 3)):
            self.ellipse(rng.uniform(0, w), self.horizon * rng.uniform(0.6, 0.9), rng.uniform(0.04, 0.1) * w,
                         rng.uniform(0.08, 0.2) * h, VEGETATION)
        apex = (self.vx, self.horizon)
        if TERRAIN in want:
            if rng.random() < 0.5:
                outer = (self.side[0] - rng.uniform(0.1, 0.3) * w, self.side[0])
            else:
                outer = (self.side[1], self.side[1] + rng.uniform(0.1, 0.3) * w)
            self.draw.polygon([apex, (outer[0], h), (outer[1], h)], fill=TERRAIN)
        self.draw.polygon([apex, (self.side[0], h), (self.side[1], h)], fill=SIDEWALK)
        self.draw.polygon([apex, (self.road[0], h), (self.road[1], h)], fill=ROAD)
        flip = rng.random() < 0.5
        for cls, side in ((WALL, 0), (FENCE, 1)):
            if cls in want:
                self.barrier(cls, self.side[side ^ flip], rng.uniform(0.12, 0.25) * h)

    def barrier(self, cls: int, bottom_x: float, tall: float) -> None:
        """A wall or fence standing along a ground line between two random depths."""
        y0, y1 = sorted((self.ground_row(0.1, 0.6), self.ground_row(0.4, 1.0)))
        x0, x1 = self.edge(bottom_x, y0), self.edge(bottom_x, y1)
        top0, top1 = y0 - tall * self.depth(y0) - 1, y1 - tall * self.depth(y1) - 1
        self.draw.polygon([(x0, y0), (x1, y1), (x1, top1), (x0, top0)], fill=cls)

    def on_sidewalk(self, y: float) -> float:
        """A random x on one of the sidewalks at row y."""
        side = int(self.rng.integers(0, 2))
        a, b = self.edge(self.side[side], y), self.edge(self.road[side], y)
        return self.rng.uniform(min(a, b), max(a, b))

    def on_road(self, y: float) -> float:
        return self.rng.uniform(self.edge(self.road[0], y), self.edge(self.road[1], y))

    def tree(self, x: float, y: float, u: float) -> None:
        self.rect(x - 0.02 * u, y - 0.5 * u, x + 0.02 * u, y, VEGETATION)
        self.ellipse(x, y - 0.6 * u, 0.18 * u, 0.22 * u, VEGETATION)

    def pole(self, x: float, y: float, u: float, top: int | None) -> None:
        """A pole, with a traffic light or sign on top when `top` says so."""
        tall, half = u * self.rng.uniform(0.7, 1.0), max(0.5, 0.012 * u)
        self.rect(x - half, y - tall, x + half, y, POLE)
        if top == LIGHT:
            self.rect(x - 3 * half - 1, y - tall - 0.16 * u, x + 3 * half + 1, y - tall + 0.02 * u, LIGHT)
        elif top == SIGN:
            self.ellipse(x, y - tall - 0.05 * u, 0.06 * u + 1, 0.06 * u + 1, SIGN)

    def person(self, x: float, y: float, u: float, cls: int) -> None:
        self.ellipse(x, y - 0.3 * u, 0.035 * u, 0.04 * u, cls)
        self.rect(x - 0.045 * u, y - 0.27 * u, x + 0.045 * u, y - 0.13 * u, cls)
        self.line([(x - 0.03 * u, y - 0.14 * u), (x - 0.05 * u, y)], cls, 0.03 * u)
        self.line([(x + 0.03 * u, y - 0.14 * u), (x + 0.05 * u, y)], cls, 0.03 * u)

    def car(self, x: float, y: float, u: float) -> None:
        self.draw.rounded_rectangle([x - 0.3 * u, y - 0.2 * u, x + 0.3 * u + 1, y - 0.05 * u + 1],
                                    radius=0.04 * u, fill=CAR)
        self.draw.polygon([(x - 0.2 * u, y - 0.19 * u), (x - 0.1 * u, y - 0.3 * u), (x + 0.12 * u, y - 0.3 * u),
                           (x + 0.22 * u, y - 0.19 * u)], fill=CAR)
        self.wheels(x, y, u, 0.19, 0.06, CAR)

    def truck(self, x: float, y: float, u: float) -> None:
        self.rect(x - 0.35 * u, y - 0.55 * u, x + 0.15 * u, y - 0.08 * u, TRUCK)
        self.rect(x + 0.16 * u, y - 0.38 * u, x + 0.35 * u, y - 0.08 * u, TRUCK)
        self.wheels(x, y, u, 0.25, 0.07, TRUCK)

    def bus(self, x: float, y: float, u: float) -> None:
        self.draw.rounded_rectangle([x - 0.55 * u, y - 0.5 * u, x + 0.55 * u + 1, y - 0.06 * u + 1],
                                    radius=0.05 * u, fill=BUS)
        self.wheels(x, y, u, 0.38, 0.07, BUS)

    def train(self, x: float, y: float, u: float) -> None:
        self.rect(x - 0.8 * u, y - 0.48 * u, x + 0.7 * u, y - 0.04 * u, TRAIN)
        self.draw.polygon([(x + 0.7 * u, y - 0.48 * u), (x + 0.8 * u, y - 0.3 * u), (x + 0.8 * u, y - 0.04 * u),
                           (x + 0.7 * u, y - 0.04 * u)], fill=TRAIN)
        for dx in (-0.6, -0.45, 0.45, 0.6):
            self.ellipse(x + dx * u, y - 0.03 * u, 0.035 * u, 0.035 * u, TRAIN)

    def wheels(self, x: float, y: float, u: float, spread: float, radius: float, cls: int, ring: float = 0) -> None:
        for dx in (-spread, spread):
            self.ellipse(x + dx * u, y - radius * u, radius * u, radius * u, cls, outline=ring)

    def motorcycle(self, x: float, y: float, u: float) -> None:
        self.wheels(x, y, u, 0.1, 0.055, MOTORCYCLE)
        self.draw.polygon([(x - 0.12 * u, y - 0.08 * u), (x - 0.02 * u, y - 0.16 * u), (x + 0.1 * u, y - 0.15 * u),
                           (x + 0.12 * u, y - 0.06 * u)], fill=MOTORCYCLE)
        self.rider(x, y - 0.1 * u, u)

    def bicycle(self, x: float, y: float, u: float, ridden: bool) -> None:
        self.wheels(x, y, u, 0.09, 0.055, BICYCLE, ring=max(1.0, 0.012 * u))
        frame = [(x - 0.09 * u, y - 0.055 * u), (x - 0.01 * u, y - 0.15 * u), (x + 0.07 * u, y - 0.15 * u),
                 (x + 0.09 * u, y - 0.055 * u), (x, y - 0.06 * u), (x - 0.09 * u, y - 0.055 * u)]
        self.line(frame, BICYCLE, 0.014 * u)
        if ridden:
            self.rider(x, y - 0.1 * u, u)

    def rider(self, x: float, y: float, u: float) -> None:
        self.ellipse(x, y - 0.23 * u, 0.035 * u, 0.04 * u, RIDER)
        self.rect(x - 0.05 * u, y - 0.2 * u, x + 0.04 * u, y - 0.05 * u, RIDER)
        self.line([(x, y - 0.06 * u), (x + 0.06 * u, y)], RIDER, 0.03 * u)

    def place(self, cls: int, near: float = 0.12, far: float = 1.0) -> tuple[float, float, float]:
        """A base point (x, y) and a size unit for one object of `cls`, on the road or the sidewalk."""
        y = self.ground_row(near, far)
        on_road = cls in (CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, RIDER)
        x = self.on_road(y) if on_road else self.on_sidewalk(y)
        return x, y, 0.75 * self.depth(y) * self.h

    def add(self, cls: int, near: float = 0.12, far: float = 1.0) -> tuple[float, Callable[[], None]]:
        """A deferred drawing of one object of `cls`, keyed by its base row for far-to-near order."""
        x, y, u = self.place(cls, near, far)
        u = max(u, 8.0)
        ridden_motorcycle = self.rng.random() < 0.5
        draws: dict[int, Callable[[], None]] = {
            PERSON: lambda: self.person(x, y, u, PERSON),
            RIDER: lambda: self.motorcycle(x, y, u) if ridden_motorcycle else self.bicycle(x, y, u, True),
            CAR: lambda: self.car(x, y, u),
            TRUCK: lambda: self.truck(x, y, u),
            BUS: lambda: self.bus(x, y, u),
            TRAIN: lambda: self.train(x, y, u),
            MOTORCYCLE: lambda: self.motorcycle(x, y, u),
            BICYCLE: lambda: self.bicycle(x, y, u, self.rng.random() < 0.5),
            POLE: lambda: self.pole(x, y, u, None),
            LIGHT: lambda: self.pole(x, y, u, LIGHT),
            SIGN: lambda: self.pole(x, y, u, SIGN),
            VEGETATION: lambda: self.tree(x, y, u),
        }
        return y, draws[cls]


_OBJECTS = (PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE, POLE, LIGHT, SIGN, VEGETATION)
_RATE = {PERSON: 1.0, CAR: 1.0, TRUCK: 0.25, BUS: 0.25, TRAIN: 0.15}  # extra objects per scene; others 0.6


def scene(rng: np.random.Generator, size: tuple[int, int], must: set[int], ego: bool) -> tuple[np.ndarray, np.ndarray]:
    """One street scene: an (H, W) uint8 trainId map holding every class in `must`, and an ego-hood mask."""
    height, width = size
    street = _Scene(rng, height, width)
    want = set(must) | {c for c in (WALL, FENCE, TERRAIN) if rng.random() < 0.5}
    street.layout(want)
    objects = [street.add(c) for c in _OBJECTS for _ in range(int(c in must) + rng.poisson(_RATE.get(c, 0.6)))]
    for _, draw in sorted(objects, key=lambda item: item[0]):
        draw()
    hood = np.zeros((height, width), dtype=bool)
    if ego:
        hood_image = Image.new("1", (width, height), 0)
        top = height * (1 - rng.uniform(0.05, 0.1))
        ImageDraw.Draw(hood_image).ellipse([-0.2 * width, top, 1.2 * width, 2 * height - top], fill=1)
        hood = np.array(hood_image)
    train_ids = np.array(street.canvas)
    for attempt in range(8):
        missing = sorted(c for c in must if not (train_ids[~hood] == c).any())
        if not missing:
            return train_ids, hood
        for cls in missing:
            if cls in (ROAD, SIDEWALK, BUILDING, SKY, TERRAIN, WALL, FENCE):
                y0 = rng.uniform(0.05, 0.7) * height
                x0 = rng.uniform(0, 0.8) * width
                street.rect(x0, y0, x0 + 0.15 * width, y0 + 0.15 * height, cls)
            else:
                street.add(cls, 0.4 + 0.05 * attempt, 0.8)[1]()
        train_ids = np.array(street.canvas)
    raise RuntimeError(f"synthetic scene lacks classes {missing}")


def _frame_name(split: str, index: int) -> tuple[str, str]:
    cities = CITIES[split]
    city = cities[index % len(cities)]
    return city, f"{city}_{index // len(cities):06d}_{19:06d}"


def _write_image(image: np.ndarray | Image.Image, path: Path) -> None:
    """Save as JPEG for a .jpg path, else as PNG (fast compression)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    if path.suffix == ".jpg":
        image.save(path, format="JPEG", quality=95)
    else:
        image.save(path, format="PNG", compress_level=1)


def _check(out: Path, checks: Sequence[tuple[str, int, int]]) -> None:
    """Refuse an output that is not a folder, and any (name, value, low) whose value is not an integer >= low."""
    for name, value, low in checks:
        if int(value) != value or value < low:
            raise InputError(f"{out}: synthetic {name} is {value}; expected an integer >= {low}")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: output exists and is not a folder; expected a folder")


def _progress(log: Callable[[str], None] | None, split: str, index: int, count: int) -> None:
    if log is not None and (index + 1 == count or (index + 1) % max(1, count // 4) == 0):
        log(f"{split}: {index + 1}/{count}")


def _street(seed: int, split: str, index: int, count: int,
            size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scene `index` of `count` in a split (together they hold every class): trainIds, ego-hood mask, RGB image."""
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], index])
    must = {c for c in range(NUM_CLASSES) if c % count == index}
    ego = index == 0 or rng.random() < 0.3
    train_ids, hood = scene(rng, size, must, ego)
    return train_ids, hood, render(train_ids, hood, rng)


def generate(out: Path, train: int = 24, val: int = 8, size: tuple[int, int] = (128, 256), seed: int = 0,
             extra: int = 0, log: Callable[[str], None] | None = None) -> None:
    """Write `train`/`val` labelled scenes and `extra` unlabeled ones below `out` in the Cityscapes layout."""
    out = Path(out)
    _check(out, (("train", train, 0), ("val", val, 0), ("extra", extra, 0),
                 ("height", size[0], _MIN_SIZE), ("width", size[1], _MIN_SIZE)))
    to_label_id = train_to_label_lut()
    height, width = int(size[0]), int(size[1])
    for split, count in (("train", train), ("val", val), ("train_extra", extra)):
        for index in range(count):
            train_ids, hood, image = _street(seed, split, index, count, (height, width))
            city, stem = _frame_name(split, index)
            _write_image(image, out / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
            if split != "train_extra":
                label_ids = to_label_id[train_ids]
                label_ids[hood] = EGO_VEHICLE_LABEL_ID
                _write_image(label_ids, out / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")
            _progress(log, split, index, count)
    if log is not None:
        log(f"wrote {train} train, {val} val, {extra} train_extra images of {height}x{width} to {out}")


# Image/mask pairs: a CamVid-like tree of the same street scenes, 11 classes and void (11) ----------

CAMVID_CLASSES = ("sky", "building", "pole", "road", "pavement", "tree", "signsymbol", "fence", "car",
                  "pedestrian", "bicyclist")
CAMVID_VOID = len(CAMVID_CLASSES)
CAMVID_MASK_SUFFIX = "_L"
CAMVID_COLORS = ((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
                 (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192), (0, 0, 0))
_TRAIN_TO_CAMVID = np.array([3, 4, 1, 1, 7, 2, 6, 6, 5, 5, 0, 9, 10, 8, 8, 8, 8, 10, 10], dtype=np.uint8)
_SEQUENCES = {"train": "0001TP", "val": "0016E5", "unlabeled": "Seq05VD"}


def generate_pairs(root: Path, train: int = 24, val: int = 8, size: tuple[int, int] = (128, 256), seed: int = 0,
                   unlabeled: int = 0, log: Callable[[str], None] | None = None) -> None:
    """Write street scenes as a CamVid-like tree: `train/`, `trainannot/`, `val/`, `valannot/`, `unlabeled/`.

    Images are `<seq>_<frame>.png`; masks `<seq>_<frame>_L.png`, palette PNGs of `CAMVID_CLASSES` indices
    with the ego vehicle as void (`CAMVID_VOID` = 11). Unlabeled images lie in nested `unlabeled/<seq>/<part>/`.
    Read it with dataset kind `pairs`, num_classes 11, ignore_index 11, mask_suffix `_L`.
    """
    root = Path(root)
    _check(root, (("train", train, 0), ("val", val, 0), ("unlabeled", unlabeled, 0),
                 ("height", size[0], _MIN_SIZE), ("width", size[1], _MIN_SIZE)))
    palette = [value for color in CAMVID_COLORS for value in color]
    height, width = int(size[0]), int(size[1])
    for name, split, count in (("train", "train", train), ("val", "val", val), ("unlabeled", "train_extra", unlabeled)):
        for index in range(count):
            train_ids, hood, image = _street(seed, split, index, count, (height, width))
            stem = f"{_SEQUENCES[name]}_{index * 30:06d}"
            if name == "unlabeled":
                _write_image(image, root / name / _SEQUENCES[name] / f"part{index % 3}" / f"{stem}.png")
            else:
                mask = _TRAIN_TO_CAMVID[train_ids]
                mask[hood] = CAMVID_VOID
                indexed = Image.fromarray(mask)
                indexed.putpalette(palette)
                _write_image(image, root / name / f"{stem}.png")
                _write_image(indexed, root / f"{name}annot" / f"{stem}{CAMVID_MASK_SUFFIX}.png")
            _progress(log, name, index, count)
    if log is not None:
        log(f"wrote {train} train, {val} val, {unlabeled} unlabeled image/mask pairs of {height}x{width} to {root}")


# Image folders: one shape per class, random colours, position and size --------------------------

SHAPES = ("disc", "square", "triangle", "cross", "ring", "diamond", "plus", "bars")
_MIN_CLASS_SIZE = 16
_SUPERSAMPLE = 4


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float) -> None:
    """One filled `shape` of radius `r` centred at (cx, cy), in white."""
    stroke = max(1, round(0.35 * r))
    if shape == "disc":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif shape == "square":
        draw.rectangle([cx - 0.8 * r, cy - 0.8 * r, cx + 0.8 * r, cy + 0.8 * r], fill=255)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + 0.8 * r), (cx + r, cy + 0.8 * r)], fill=255)
    elif shape == "cross":
        draw.line([(cx - r, cy - r), (cx + r, cy + r)], fill=255, width=stroke)
        draw.line([(cx - r, cy + r), (cx + r, cy - r)], fill=255, width=stroke)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=255, width=stroke)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=255)
    elif shape == "plus":
        draw.rectangle([cx - r, cy - stroke / 2, cx + r, cy + stroke / 2], fill=255)
        draw.rectangle([cx - stroke / 2, cy - r, cx + stroke / 2, cy + r], fill=255)
    elif shape == "bars":
        for dy in (-0.75, 0.0, 0.75):
            draw.rectangle([cx - r, cy + dy * r - 0.15 * r, cx + r, cy + dy * r + 0.15 * r], fill=255)
    else:
        raise ValueError(f"unknown shape {shape}")


def shape_image(rng: np.random.Generator, shape: str, size: int) -> np.ndarray:
    """A `size` x `size` RGB uint8 image: one `shape` of random colour, size and position on a blotchy background.

    Colours do not depend on the shape, so a class is told by its outline, not by its mean colour.
    """
    big = size * _SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    r = rng.uniform(0.22, 0.36) * big
    cx, cy = rng.uniform(r, big - r, 2)
    _draw_shape(ImageDraw.Draw(canvas), shape, cx, cy, r)
    alpha = np.asarray(canvas.resize((size, size), Image.BOX), dtype=np.float32)[:, :, None] / 255
    foreground, background = rng.uniform(0, 255, (2, 3))
    while abs(background.mean() - foreground.mean()) < 70:  # the shape is brighter or darker than the ground
        background = rng.uniform(0, 255, 3)
    blotch = _smooth_noise(rng, size, size, max(2, size // 8))[:, :, None] - 0.5
    rgb = background + blotch * rng.uniform(-60, 60, 3)
    rgb = rgb * (1 - alpha) + foreground * alpha
    rgb = rgb * rng.uniform(0.85, 1.15) + rng.normal(0.0, 8.0, rgb.shape)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def generate_imagefolder(root: Path, classes: int = 4, train: int = 24, val: int = 8, unlabeled: int = 32,
                         size: int = 32, seed: int = 0, log: Callable[[str], None] | None = None) -> None:
    """Write an ImageFolder tree of `SHAPES[:classes]`: `train`/`val` images per class, `unlabeled` images in all.

    `root/train/<shape>/<n>.png`, `root/val/<shape>/<n>.png`; unlabeled images of random shapes lie in nested
    `root/unlabeled/<a|b>/<part>/` folders, PNG and JPEG alternately. Read it with dataset kind `imagefolder`.
    """
    root = Path(root)
    _check(root, (("classes", classes, 1), ("train", train, 0), ("val", val, 0), ("unlabeled", unlabeled, 0),
                 ("size", size, _MIN_CLASS_SIZE)))
    if classes > len(SHAPES):
        raise InputError(f"{root}: synthetic classes is {classes}; expected at most {len(SHAPES)}")
    size = int(size)
    for code, (split, count) in enumerate((("train", train), ("val", val))):
        for label, shape in enumerate(SHAPES[:classes]):
            for index in range(count):
                rng = np.random.default_rng([seed, code, label, index])
                _write_image(shape_image(rng, shape, size), root / split / shape / f"{index:05d}.png")
            _progress(log, split, label, classes)
    for index in range(unlabeled):
        rng = np.random.default_rng([seed, 2, index])
        shape = SHAPES[int(rng.integers(classes))]
        suffix = ".jpg" if index % 2 else ".png"
        _write_image(shape_image(rng, shape, size), root / "unlabeled" / "ab"[index % 2] / f"part{index % 3}" /
                     f"{index:05d}{suffix}")
    if log is not None:
        log(f"wrote {classes} classes x ({train} train + {val} val) and {unlabeled} unlabeled images of "
            f"{size}x{size} to {root}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data.synthetic", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="output root")
    parser.add_argument("--layout", choices=("cityscapes", "pairs", "imagefolder"), default="cityscapes",
                        help="cityscapes: leftImg8bit/ + gtFine/; pairs: CamVid-like train/ + trainannot/ ...; "
                             "imagefolder: train/<class>/, val/<class>/, unlabeled/")
    parser.add_argument("--train", type=int, default=24, help="labelled training images (per class: imagefolder)")
    parser.add_argument("--val", type=int, default=8, help="labelled validation images (per class: imagefolder)")
    parser.add_argument("--size", type=int, nargs="+", metavar=("H", "W"),
                        help="image size; one value for square images (default 128 256; imagefolder: 32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--extra", type=int, default=0,
                        help="unlabeled images (cityscapes: leftImg8bit/train_extra; others: unlabeled/)")
    parser.add_argument("--classes", type=int,
                        help=f"imagefolder only: number of classes, 1..{len(SHAPES)} (default 4)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.size is not None and len(args.size) > 2:
        parser.error("--size takes one or two values: H [W]")
    if args.classes is not None and args.layout != "imagefolder":
        parser.error("--classes applies to --layout imagefolder only")
    if args.layout == "imagefolder":
        size = args.size or [32]
        if len(set(size)) != 1:
            parser.error("--size of --layout imagefolder is one value (square images)")
        generate_imagefolder(args.out, 4 if args.classes is None else args.classes, args.train, args.val, args.extra,
                             size[0], args.seed, log=print)
        return 0
    height, width = (args.size * 2)[:2] if args.size else (128, 256)
    write = generate if args.layout == "cityscapes" else generate_pairs
    write(args.out, args.train, args.val, (height, width), args.seed, args.extra, log=print)
    return 0


if __name__ == "__main__":
    run_cli(main)
