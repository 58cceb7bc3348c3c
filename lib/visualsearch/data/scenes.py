"""The synthetic scenes world: 2D scenes of shapes with add / remove / change modification texts.

Why: CSS (TIRG's "Color, Shape, Size" scenes) is where composed retrieval needs *spatial* composition: a
text such as "remove top-left object" or "make middle-center object red" can only be followed by a model
that knows what is where, which is MAAF's argument against a single global image vector. This world draws
such scenes with a fixed seed and writes them in the real layouts, so the same readers serve real and
synthetic data:

- CSS: `css_toy_dataset_novel2_small.dup.npy`, a pickled dict {split: {"objects_img": [[object dict]],
  "labels": [int], "mods": [{"from": [image idx], "to": [image idx], "to_str": text}]}} and images
  `images/css_{split}_{idx:06d}.png`. Object dicts carry `shape`, `color`, `size` and `pos` ([y, x] in
  [0, 1]) as in CSS, plus the grid `cell`. A scene reached twice is written twice (its own small jitter)
  with one `label`, so "a hit is a gallery image with the target's label" means what it means in CSS.
- Spot-the-Diff: `annotations/{train,val,test}.json` = [{"img_id": "123", "sentences": [...]}] and
  `resized_images/{id}.png` (before) / `{id}_2.png` (after): busier scenes (more objects, textured
  backgrounds). Each "before" scene is written `spot_variants` times, each entry with its own "after" in which
  a *different* object changed, described by one sentence in varied words (some entries also hold an empty
  sentence, as the real annotations do). In the real data the sentence names a difference between
  near-duplicate frames; here the gallery holds the before's copies and its look-alike afters, so the text
  is what tells the target from them (an image-only model cannot: every look-alike is as close to the
  reference as the target).

Public API: `ScenesWorldConfig`; `build_css(folder, params)` / `build_spot_the_diff(folder, params)` (the
`build` of `worlds.ensure_world`); `css_world(cfg)` / `spot_the_diff_world(cfg)` return cached folders;
`render_scene(objects, size, rng)` draws one scene.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .worlds import ensure_world

# CSS's palette (the 2D renderer of the TIRG/MAAF code), RGB 0-255.
COLOURS = {"gray": (87, 87, 87), "red": (244, 35, 35), "blue": (42, 75, 215), "green": (29, 205, 20),
           "brown": (129, 74, 25), "purple": (129, 38, 192), "cyan": (41, 208, 208), "yellow": (255, 238, 51)}
SHAPES = ("rectangle", "circle", "triangle")
SIZES = ("small", "large")
ROWS, COLUMNS = ("top", "middle", "bottom"), ("left", "center", "right")
CSS_FILE = "css_toy_dataset_novel2_small.dup.npy"


@dataclass
class ScenesWorldConfig:
    """Sizes of a scenes world; the world is a pure function of these fields (seed included)."""

    seed: int = 0                    # draws scenes, modifications and jitter
    image_size: int = 64             # images are image_size x image_size RGB PNG (CSS's 2D renders are 64)
    shapes: tuple = SHAPES           # shape names used (subset of SHAPES)
    colours: tuple = tuple(COLOURS)  # colour names used (subset of COLOURS)
    min_objects: int = 2             # objects per CSS base scene, at least
    max_objects: int = 5             # ... and at most (a 3x3 grid holds 9)
    train_scenes: int = 600          # CSS base scenes of the train split
    test_scenes: int = 200           # CSS base scenes of the test split
    mods_per_scene: int = 3          # modifications applied to each base scene (one target image each)
    jitter: float = 0.04             # random shift of each object inside its cell (fraction of the image)
    spot_pairs: tuple = (300, 60, 60)  # Spot-the-Diff before/after pairs in train, val, test
    spot_min_objects: int = 4        # objects in a Spot-the-Diff "before" scene, at least
    spot_max_objects: int = 7        # ... and at most
    spot_variants: int = 3           # entries (after scenes) per Spot-the-Diff before scene, each changing
                                     # another object: look-alikes that only the sentence tells apart

    def __post_init__(self):
        self.shapes, self.colours = tuple(self.shapes), tuple(self.colours)
        self.spot_pairs = tuple(self.spot_pairs)
        bad = [s for s in self.shapes if s not in SHAPES] + [c for c in self.colours if c not in COLOURS]
        if bad:
            raise ValueError(f"ScenesWorldConfig: unknown shapes/colours {bad}; shapes among {SHAPES}, "
                             f"colours among {tuple(COLOURS)}")
        if not 1 <= self.min_objects <= self.max_objects <= 8 or self.spot_max_objects > 8:
            raise ValueError("ScenesWorldConfig: need 1 <= min_objects <= max_objects <= 8 (one free cell "
                             "for 'add') and spot_max_objects <= 8")
        if not 1 <= self.spot_variants <= 9:
            raise ValueError(f"ScenesWorldConfig.spot_variants={self.spot_variants}: need 1 .. 9 (each variant "
                             "changes another of the 9 cells)")


# --------------------------------------------------------------------------------------------- scenes

def cell_name(cell) -> str:
    return f"{ROWS[cell[0]]}-{COLUMNS[cell[1]]}"


def _object(cell, shape, colour, size) -> dict:
    return {"cell": [int(cell[0]), int(cell[1])], "shape": shape, "color": colour, "size": size,
            "pos": [(cell[0] + 0.5) / 3, (cell[1] + 0.5) / 3]}


def scene_key(objects) -> tuple:
    """Canonical form of a scene (what CSS labels group by): its objects sorted by cell."""
    return tuple(sorted((tuple(o["cell"]), o["shape"], o["color"], o["size"]) for o in objects))


def random_scene(rng: np.random.Generator, cfg: ScenesWorldConfig, n: int) -> list[dict]:
    cells = [(r, c) for r in range(3) for c in range(3)]
    chosen = rng.choice(9, size=n, replace=False)
    return [_object(cells[i], str(rng.choice(cfg.shapes)), str(rng.choice(cfg.colours)), str(rng.choice(SIZES)))
            for i in sorted(chosen)]


def random_modification(rng: np.random.Generator, cfg: ScenesWorldConfig, objects: list[dict]):
    """(kind, new objects, change) for one add / remove / colour / size change; `change` describes it."""
    free = [(r, c) for r in range(3) for c in range(3) if [r, c] not in [o["cell"] for o in objects]]
    kinds = (["add"] if free else []) + (["remove", "colour", "size"] if objects else [])
    kind = str(rng.choice(kinds))
    if kind == "add":
        cell = free[rng.integers(len(free))]
        new = _object(cell, str(rng.choice(cfg.shapes)), str(rng.choice(cfg.colours)), str(rng.choice(SIZES)))
        return kind, sorted(objects + [new], key=lambda o: o["cell"]), {"object": new}
    i = int(rng.integers(len(objects)))
    old = objects[i]
    if kind == "remove":
        return kind, objects[:i] + objects[i + 1:], {"object": old}
    changed = dict(old)
    if kind == "colour":
        changed["color"] = str(rng.choice([c for c in cfg.colours if c != old["color"]]))
    else:
        changed["size"] = "small" if old["size"] == "large" else "large"
    return kind, objects[:i] + [changed] + objects[i + 1:], {"object": old, "new": changed}


def css_text(kind: str, change: dict, objects: list[dict]) -> str:
    """CSS-style modification text. Objects are named by place, or by colour and shape when that is unique."""
    o = change["object"]
    place = cell_name(o["cell"])
    unique = sum(1 for p in objects if p["color"] == o["color"] and p["shape"] == o["shape"]) == 1
    name = f"{o['color']} {o['shape']}" if unique and kind != "add" else f"{place} object"
    if kind == "add":
        return f"add {o['size']} {o['color']} {o['shape']} to {place}"
    if kind == "remove":
        return f"remove {name}"
    if kind == "colour":
        return f"make {name} {change['new']['color']}"
    return f"make {name} {change['new']['size']}"


def render_scene(objects, size: int = 64, rng: np.random.Generator | None = None, jitter: float = 0.0,
                 background=(255, 255, 255), texture: float = 0.0) -> Image.Image:
    """Draw objects on a background (drawn at 4x and downsampled, for smooth edges).

    Small objects span 1/8 of the image, large ones 1/4 (CSS's 4 and 8 px at 64 px). `jitter` moves each
    object inside its cell; `texture` adds soft blotches to the background (Spot-the-Diff scenes).
    """
    rng = rng or np.random.default_rng(0)
    big = size * 4
    canvas = Image.new("RGB", (big, big), tuple(int(v) for v in background))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(texture * 12)):
        x, y, r = rng.uniform(0, big, 2).tolist() + [float(rng.uniform(big * 0.05, big * 0.2))]
        shade = tuple(int(np.clip(v + rng.normal(0, 18), 0, 255)) for v in background)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=shade)
    shifts = rng.uniform(-jitter, jitter, (3, 3, 2))  # one per cell: unchanged objects keep their place
    for o in objects:
        cy, cx = (np.array(o["pos"]) + shifts[o["cell"][0], o["cell"][1]]) * big
        s = big / (8 if o["size"] == "large" else 16)
        colour = COLOURS[o["color"]]
        if o["shape"] == "rectangle":
            draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=colour)
        elif o["shape"] == "circle":
            draw.ellipse([cx - s, cy - s, cx + s, cy + s], fill=colour)
        else:
            draw.polygon([(cx, cy - s), (cx - s, cy + s), (cx + s, cy + s)], fill=colour)
    return canvas.resize((size, size), Image.LANCZOS)


# ------------------------------------------------------------------------------------------------ CSS

def draw_css_split(rng: np.random.Generator, cfg: ScenesWorldConfig, n_scenes: int):
    """(objects per image, label per image, mods) of one split: base scenes and their modified versions."""
    images, labels, label_of = [], [], {}
    mods: dict[str, dict] = {}

    def add_image(objects):
        key = scene_key(objects)
        label_of.setdefault(key, len(label_of))
        images.append(objects)
        labels.append(label_of[key])
        return len(images) - 1

    for _ in range(n_scenes):
        base = random_scene(rng, cfg, int(rng.integers(cfg.min_objects, cfg.max_objects + 1)))
        source = add_image(base)
        seen = set()
        for _ in range(cfg.mods_per_scene):
            kind, objects, change = random_modification(rng, cfg, base)
            text = css_text(kind, change, base)
            if text in seen:
                continue
            seen.add(text)
            target = add_image(objects)
            mod = mods.setdefault(text, {"from": [], "to": [], "to_str": text})
            mod["from"].append(source)
            mod["to"].append(target)
    return images, labels, list(mods.values())


def build_css(folder, params: dict) -> None:
    """Write a CSS-style dataset into `folder` (the `build` of worlds.ensure_world)."""
    cfg = ScenesWorldConfig(**params)
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    data = {}
    for split, n, stream in (("train", cfg.train_scenes, 1), ("test", cfg.test_scenes, 2)):
        rng = np.random.default_rng([cfg.seed, stream])
        images, labels, mods = draw_css_split(rng, cfg, n)
        for idx, objects in enumerate(images):
            render_scene(objects, cfg.image_size, rng, cfg.jitter).save(folder / "images" / f"css_{split}_{idx:06d}.png")
        data[split] = {"objects_img": images, "labels": labels, "mods": mods}
    np.save(folder / CSS_FILE, data, allow_pickle=True)


# -------------------------------------------------------------------------------------- Spot-the-Diff

_SPOT_PHRASES = {
    "add": ["there is a new {desc} in the {place}", "a {desc} has appeared in the {place}",
            "the {place} now has a {desc}", "someone added a {desc} at the {place}"],
    "remove": ["the {desc} in the {place} is gone", "the {desc} at the {place} has been removed",
               "there is no longer a {desc} in the {place}", "the {place} {shape} is missing"],
    "colour": ["the {desc} in the {place} is now {new}", "the {place} {shape} changed from {old} to {new}",
               "the {old} {shape} turned {new}", "the {shape} at the {place} became {new}"],
    "size": ["the {desc} in the {place} got {bigger}", "the {place} {shape} is now {new}",
             "the {old_size} {color} {shape} became {new}", "the {color} {shape} at the {place} is {bigger} now"],
}


def spot_sentence(rng: np.random.Generator, kind: str, change: dict) -> str:
    o = change["object"]
    place = cell_name(o["cell"]).replace("-", " ").replace("middle center", "middle")
    new = change.get("new", {})
    fields = {"desc": f"{o['color']} {o['shape']}", "place": place, "shape": o["shape"], "color": o["color"],
              "old": o["color"], "new": new.get("color") if kind == "colour" else new.get("size"),
              "old_size": o["size"], "bigger": "bigger" if new.get("size") == "large" else "smaller"}
    return str(rng.choice(_SPOT_PHRASES[kind])).format(**fields)


def spot_variants(rng: np.random.Generator, cfg: ScenesWorldConfig, objects: list[dict], n: int) -> list:
    """n single changes of one scene, each on another cell: [(after objects, sentence)]. Why distinct cells:
    the afters are look-alikes of each other and of the before, and the sentence (which names the changed
    object and its place) must be what singles out its own after."""
    out, used = [], set()
    for _ in range(50 * n):
        if len(out) == n:
            break
        kind, after, change = random_modification(rng, cfg, objects)
        cell = tuple(change["object"]["cell"])
        if cell not in used:
            used.add(cell)
            out.append((after, spot_sentence(rng, kind, change)))
    return out


def build_spot_the_diff(folder, params: dict) -> None:
    """Write a Spot-the-Diff-style dataset into `folder` (the `build` of worlds.ensure_world): per split,
    `spot_pairs` entries, in groups of `spot_variants` sharing one before scene (see the module docstring)."""
    cfg = ScenesWorldConfig(**params)
    folder = Path(folder)
    (folder / "annotations").mkdir(parents=True, exist_ok=True)
    (folder / "resized_images").mkdir(parents=True, exist_ok=True)
    next_id = 1
    for split, n, stream in zip(("train", "val", "test"), cfg.spot_pairs, (11, 12, 13)):
        rng = np.random.default_rng([cfg.seed, stream])
        entries = []
        while len(entries) < n:
            before = random_scene(rng, cfg, int(rng.integers(cfg.spot_min_objects, cfg.spot_max_objects + 1)))
            background = tuple(int(v) for v in rng.integers(150, 235, 3))
            variants = spot_variants(rng, cfg, before, min(cfg.spot_variants, n - len(entries)))
            state = rng.bit_generator.state  # one jitter and texture for the before and all its afters
            for after, sentence in variants:
                sentences = [sentence] + ([""] if rng.random() < 0.1 else [])  # real annotations hold empty ones
                img_id = str(next_id)
                next_id += 1
                resume = rng.bit_generator.state
                for suffix, objs in (("", before), ("_2", after)):
                    rng.bit_generator.state = state
                    render_scene(objs, cfg.image_size, rng, cfg.jitter, background, texture=1.0).save(
                        folder / "resized_images" / f"{img_id}{suffix}.png")
                rng.bit_generator.state = resume
                entries.append({"img_id": img_id, "sentences": sentences})
        (folder / "annotations" / f"{split}.json").write_text(json.dumps(entries, indent=0))


# ------------------------------------------------------------------------------------------ the worlds

def css_world(cfg: ScenesWorldConfig, root=None) -> Path:
    """Folder of the CSS-style world drawn with `cfg` (built once, cached)."""
    return ensure_world("scenes-css", asdict(cfg), build_css, root)


def spot_the_diff_world(cfg: ScenesWorldConfig, root=None) -> Path:
    """Folder of the Spot-the-Diff-style world drawn with `cfg` (built once, cached)."""
    return ensure_world("scenes-spot", asdict(cfg), build_spot_the_diff, root)
