"""Deterministic synthetic video QA: coloured shapes on a plain background, questions by kind of evidence.

Every video is a `Scene` of one or two shapes, rendered with anti-aliasing and encoded as an h264 mp4 with PyAV.
Scenes come in four kinds, each asked the questions its content answers unambiguously:

| kind     | content                                              | question types                   |
|----------|------------------------------------------------------|----------------------------------|
| `static` | one shape resting near the middle of one frame side  | color, shape, position           |
| `motion` | one shape moving in a straight line, slow or fast    | color, shape, direction, speed   |
| `order`  | two shapes appearing one after the other             | color, shape, order              |
| `count`  | one shape appearing 1-4 times (hidden in between)    | color, shape, count              |

Answers are computed from the scene's geometry (not stored labels), so a question can never disagree with its video.
Within each split the answers of every question type are balanced (each answer equally often, give or take one) and
the scene kinds are balanced. Each split draws from its own random stream of the seed, so a split's content does not
depend on the other splits' sizes, and a scene belongs to the split its hash names (other draws are redrawn), so no
scene occurs in two splits.

Output directory (`generate_dataset`):

    videos/{split}_{index:05d}.mp4          one video per scene
    {split}.json                            Video-LLaVA training format, one question per record, every split
    align.json                              train-split captions for the alignment stage (Video-LLaVA format)
    {split}_q.json, {split}_a.json          the authors' open-ended evaluation files (validation, test)
    {split}_mcq_q.json, {split}_mcq_a.json  the authors' multiple-choice evaluation files (validation, test)
    dataset_info.json                       settings, question counts and majority-class baselines

Run `python examples/synthetic_video_qa.py --output-dir DIR` to generate a dataset.
"""

import hashlib
import json
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import av
import numpy as np
from tqdm.auto import tqdm


T = TypeVar("T")

# Video format.
FRAME_SIZE = 64
"""Width and height of every video in pixels."""
NUM_FRAMES = 32
FPS = 8
VIDEO_CODEC = "libx264"
PIXEL_FORMAT = "yuv420p"
ENCODER_OPTIONS = {"crf": "18", "preset": "veryfast", "threads": "1"}
"""Near-lossless quality keeps shape edges and colours clean at 64x64; one thread keeps the bytes reproducible."""
VIDEO_EXTENSION = ".mp4"
VIDEO_DIRECTORY = "videos"

# Drawing.
SUPERSAMPLING = 4
"""Sub-pixel samples per pixel side: edges are anti-aliased and slow motion moves smoothly."""
BACKGROUND_RGB = (0, 0, 0)
SHAPE_RADIUS = 9.0
"""Half the extent of every shape in pixels (a circle's radius)."""
SQUARE_HALF_SIDE = 0.85 * SHAPE_RADIUS
"""Smaller than the radius so that a square covers about the area of a circle."""
TRIANGLE_BASE_OFFSET = 0.8 * SHAPE_RADIUS
"""Distance from the centre down to the base of the upward-pointing triangle (its apex is `SHAPE_RADIUS` up)."""
EDGE_MARGIN = 1.0
"""Pixels kept free between a shape and the frame border."""
CENTRE_MIN = SHAPE_RADIUS + EDGE_MARGIN
CENTRE_MAX = FRAME_SIZE - SHAPE_RADIUS - EDGE_MARGIN
FRAME_MIDDLE = FRAME_SIZE / 2

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (40, 90, 240),
    "yellow": (240, 220, 40),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle")

# Scene layout.
SIDE_OFFSET_RANGE = (CENTRE_MIN, 16.0)
"""How far from its side a `static` or `order` shape's centre lies: always inside the outer quarter of the frame."""
SIDE_SPREAD = 6.0
"""How far along its side a shape's centre may stray from the side's midpoint."""
SPEED_RANGES = {"slow": (0.3, 0.5), "fast": (1.1, 1.4)}
"""Pixels per frame: over the 31 frame steps a slow shape travels 9-16 px, a fast one 34-43 px."""
SPEED_THRESHOLD = 0.8
"""Speeds above this many pixels per frame are "fast"."""
ORDER_FIRST_APPEARANCE_MAX = 4
"""The first shape of an `order` scene appears within the first frames ..."""
ORDER_DELAY_RANGE = (8, 16)
"""... and the second this many frames later (at least 8 frames: 4 of the 16 frames the 16-frame encoders see)."""
MIN_RUN_FRAMES = 3
"""Every visible and every hidden stretch of a `count` scene lasts at least this many frames, so that sampling every
second frame (the authors' 16-frame encoders) still sees every appearance and every gap."""
MAX_SCENE_ATTEMPTS = 1000
"""Redraws allowed while looking for a scene that belongs to the requested split (about 3 are needed)."""

# Splits.
SPLITS = ("train", "validation", "test")
EVALUATION_SPLITS = ("validation", "test")
DEFAULT_NUM_VIDEOS = {"train": 2000, "validation": 200, "test": 400}
SCENE_STREAM, QUESTION_STREAM, MCQ_STREAM = range(3)
"""Each split's independent random streams, `(seed, split index, stream)`: scenes, question wordings, MCQ options."""

# Questions and answers.
POSITIONS = ("left", "right", "top", "bottom")
DIRECTIONS = ("left", "right", "up", "down")
SPEEDS = tuple(SPEED_RANGES)
COUNTS = ("1", "2", "3", "4")
ANSWERS: dict[str, tuple[str, ...]] = {
    "color": tuple(COLORS),
    "shape": SHAPES,
    "position": POSITIONS,
    "direction": DIRECTIONS,
    "speed": SPEEDS,
    "order": SHAPES,
    "count": COUNTS,
}
"""The closed set of answers of every question type."""
QUESTION_TYPES = tuple(ANSWERS)
ANSWER_VOCABULARY: tuple[str, ...] = tuple(sorted({answer for answers in ANSWERS.values() for answer in answers}))
"""Every answer of every question type: single words or digits."""
MCQ_EXTRA_OPTIONS: dict[str, tuple[str, ...]] = {"speed": ("still",)}
"""Wrong-only options that give question types with two answers a third option (every MCQ has 3-5 options)."""
MCQ_OPTIONS: dict[str, tuple[str, ...]] = {
    question_type: answers + MCQ_EXTRA_OPTIONS.get(question_type, ()) for question_type, answers in ANSWERS.items()
}

QUESTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "color": ("What color is the {shape}?", "Which color does the {shape} have?"),
    "shape": ("What shape is the {color} object?", "Which shape is {color}?"),
    "position": ("Where is the {color} {shape}?", "On which side of the frame is the {color} {shape}?"),
    "direction": ("Which way does the {color} {shape} move?", "In which direction is the {color} {shape} moving?"),
    "speed": ("How fast does the {color} {shape} move?", "Is the {color} {shape} moving slow or fast?"),
    "order": ("Which shape appears first?", "Which shape shows up first?"),
    "count": ("How many times does the {color} {shape} appear?", "How often does the {color} {shape} appear?"),
}
"""Wordings of every question type; `{color}` and `{shape}` name the scene's subject."""
VIDEO_PLACEHOLDER = "<video>"
ALIGN_PROMPT = f"{VIDEO_PLACEHOLDER}\nDescribe the video."
SPEED_ADVERBS = {"slow": "slowly", "fast": "quickly"}

SCENE_KINDS = ("static", "motion", "order", "count")
SCENE_QUESTION_TYPES: dict[str, tuple[str, ...]] = {
    "static": ("color", "shape", "position"),
    "motion": ("color", "shape", "direction", "speed"),
    "order": ("color", "shape", "order"),
    "count": ("color", "shape", "count"),
}


@dataclass(frozen=True)
class SceneObject:
    """One shape: its centre at frame 0, its velocity and the frames in which it is visible."""

    shape: str
    color: str
    x: float
    y: float
    velocity_x: float = 0.0
    velocity_y: float = 0.0
    visible: tuple[tuple[int, int], ...] = ((0, NUM_FRAMES),)
    """Half-open frame ranges `(start, stop)` in which the shape is drawn."""

    def centre(self, frame: int) -> tuple[float, float]:
        """Centre `(x, y)` in pixels at `frame`."""
        return self.x + self.velocity_x * frame, self.y + self.velocity_y * frame

    def visible_frames(self) -> list[int]:
        """Indices of the frames that show the shape."""
        return [frame for start, stop in self.visible for frame in range(start, stop)]


@dataclass(frozen=True)
class Scene:
    """A video's content: its kind, its shapes, and which shape the questions are about."""

    kind: str
    objects: tuple[SceneObject, ...]
    subject: int = 0

    @property
    def subject_object(self) -> SceneObject:
        """The shape the questions are about."""
        return self.objects[self.subject]


@dataclass(frozen=True)
class Question:
    """One question about a scene with its single correct answer."""

    question_type: str
    text: str
    answer: str


# ---------------------------------------------------------------------------------------------------------------------
# Rendering


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Which sample points, at offsets `(dx, dy)` from a shape's centre, lie inside the shape."""
    if shape == "circle":
        return dx**2 + dy**2 <= SHAPE_RADIUS**2
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= SQUARE_HALF_SIDE
    if shape == "triangle":
        height = TRIANGLE_BASE_OFFSET + SHAPE_RADIUS
        half_width = SHAPE_RADIUS * (dy + SHAPE_RADIUS) / height
        return (dy >= -SHAPE_RADIUS) & (dy <= TRIANGLE_BASE_OFFSET) & (np.abs(dx) <= half_width)
    raise ValueError(f"Unknown shape {shape!r}; choose one of {SHAPES}")


def _paint(frame: np.ndarray, shape: str, rgb: tuple[int, int, int], centre: tuple[float, float]) -> None:
    """Blend one anti-aliased shape into a float RGB frame, in place, touching only its bounding box."""
    x, y = centre
    left, top = (max(0, math.floor(value - SHAPE_RADIUS) - 1) for value in (x, y))
    right, bottom = (min(FRAME_SIZE, math.ceil(value + SHAPE_RADIUS) + 1) for value in (x, y))
    xs = (np.arange(left * SUPERSAMPLING, right * SUPERSAMPLING) + 0.5) / SUPERSAMPLING
    ys = (np.arange(top * SUPERSAMPLING, bottom * SUPERSAMPLING) + 0.5) / SUPERSAMPLING
    mask = _shape_mask(shape, xs[None, :] - x, ys[:, None] - y)
    height, width = bottom - top, right - left
    coverage = mask.reshape(height, SUPERSAMPLING, width, SUPERSAMPLING).mean(axis=(1, 3))[..., None]
    region = frame[top:bottom, left:right]
    region += coverage * (np.asarray(rgb, dtype=np.float32) - region)


def render_frames(scene: Scene) -> np.ndarray:
    """The scene's frames as uint8 RGB, shape `[NUM_FRAMES, FRAME_SIZE, FRAME_SIZE, 3]`."""
    frames = np.empty((NUM_FRAMES, FRAME_SIZE, FRAME_SIZE, 3), dtype=np.float32)
    frames[...] = BACKGROUND_RGB
    for obj in scene.objects:
        for frame in obj.visible_frames():
            _paint(frames[frame], obj.shape, COLORS[obj.color], obj.centre(frame))
    return np.round(frames).astype(np.uint8)


def render_video(scene: Scene, path: str | Path) -> Path:
    """Render `scene` and write it to `path` as an h264 (yuv420p) mp4; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream(VIDEO_CODEC, rate=FPS, options=ENCODER_OPTIONS)
        stream.width = stream.height = FRAME_SIZE
        stream.pix_fmt = PIXEL_FORMAT
        for frame in render_frames(scene):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Questions: answers are read off the scene's geometry


def _position(scene: Scene) -> str:
    x, y = scene.subject_object.centre(0)
    if abs(x - FRAME_MIDDLE) > abs(y - FRAME_MIDDLE):
        return "left" if x < FRAME_MIDDLE else "right"
    return "top" if y < FRAME_MIDDLE else "bottom"


def _direction(scene: Scene) -> str:
    obj = scene.subject_object
    if abs(obj.velocity_x) > abs(obj.velocity_y):
        return "right" if obj.velocity_x > 0 else "left"
    return "down" if obj.velocity_y > 0 else "up"


def _speed(scene: Scene) -> str:
    obj = scene.subject_object
    return "fast" if math.hypot(obj.velocity_x, obj.velocity_y) > SPEED_THRESHOLD else "slow"


def _first_shape(scene: Scene) -> str:
    return min(scene.objects, key=lambda obj: obj.visible[0][0]).shape


ANSWER_FUNCTIONS: dict[str, Callable[[Scene], str]] = {
    "color": lambda scene: scene.subject_object.color,
    "shape": lambda scene: scene.subject_object.shape,
    "position": _position,
    "direction": _direction,
    "speed": _speed,
    "order": _first_shape,
    "count": lambda scene: str(len(scene.subject_object.visible)),
}


def scene_questions(scene: Scene, rng: np.random.Generator | None = None) -> list[Question]:
    """The questions the scene's kind asks, with their answers. With `rng` each question's wording is drawn from its
    paraphrases; without, the first wording is used."""
    subject = scene.subject_object
    questions = []
    for question_type in SCENE_QUESTION_TYPES[scene.kind]:
        templates = QUESTION_TEMPLATES[question_type]
        template = templates[0] if rng is None else templates[rng.integers(len(templates))]
        text = template.format(color=subject.color, shape=subject.shape)
        questions.append(Question(question_type, text, ANSWER_FUNCTIONS[question_type](scene)))
    return questions


def describe(scene: Scene) -> str:
    """A one-sentence caption of the scene (used for the alignment stage)."""
    subject = scene.subject_object
    name = f"{subject.color} {subject.shape}"
    if scene.kind == "static":
        return f"A {name} rests at the {_position(scene)} of the frame."
    if scene.kind == "motion":
        return f"A {name} moves {_direction(scene)} {SPEED_ADVERBS[_speed(scene)]}."
    if scene.kind == "order":
        first, second = sorted(scene.objects, key=lambda obj: obj.visible[0][0])
        return f"A {first.color} {first.shape} appears, then a {second.color} {second.shape}."
    count = len(subject.visible)
    return f"A {name} appears {count} {'time' if count == 1 else 'times'}."


# ---------------------------------------------------------------------------------------------------------------------
# Scene sampling


def _side_centre(rng: np.random.Generator, side: str) -> tuple[float, float]:
    """A centre near the middle of `side` of the frame."""
    offset = float(rng.uniform(*SIDE_OFFSET_RANGE))
    along = FRAME_MIDDLE + float(rng.uniform(-SIDE_SPREAD, SIDE_SPREAD))
    return {
        "left": (offset, along),
        "right": (FRAME_SIZE - offset, along),
        "top": (along, offset),
        "bottom": (along, FRAME_SIZE - offset),
    }[side]


def _static_scene(rng: np.random.Generator, color: str, shape: str, position: str) -> Scene:
    x, y = _side_centre(rng, position)
    return Scene("static", (SceneObject(shape, color, x, y),))


def _motion_scene(rng: np.random.Generator, color: str, shape: str, direction: str, speed: str) -> Scene:
    step = float(rng.uniform(*SPEED_RANGES[speed]))
    sign = 1.0 if direction in ("right", "down") else -1.0
    start = float(rng.uniform(CENTRE_MIN, CENTRE_MAX - step * (NUM_FRAMES - 1)))
    start = start if sign > 0 else FRAME_SIZE - start
    across = float(rng.uniform(CENTRE_MIN, CENTRE_MAX))
    if direction in ("left", "right"):
        obj = SceneObject(shape, color, start, across, velocity_x=sign * step)
    else:
        obj = SceneObject(shape, color, across, start, velocity_y=sign * step)
    return Scene("motion", (obj,))


def _order_scene(rng: np.random.Generator, color: str, shape: str, first: str) -> Scene:
    """Two shapes on opposite sides, `first` appearing first; the questions are about the `color` `shape`, which is
    the first one when `shape == first`."""
    if shape == first:
        shapes, subject = (first, str(rng.choice([other for other in SHAPES if other != first]))), 0
    else:
        shapes, subject = (first, shape), 1
    other_color = str(rng.choice([name for name in COLORS if name != color]))
    colors = (color, other_color) if subject == 0 else (other_color, color)
    sides = ("left", "right") if rng.random() < 0.5 else ("top", "bottom")
    sides = sides if rng.random() < 0.5 else sides[::-1]
    first_frame = int(rng.integers(0, ORDER_FIRST_APPEARANCE_MAX + 1))
    second_frame = first_frame + int(rng.integers(ORDER_DELAY_RANGE[0], ORDER_DELAY_RANGE[1] + 1))
    objects = tuple(
        SceneObject(name, name_color, *_side_centre(rng, side), visible=((appear, NUM_FRAMES),))
        for name, name_color, side, appear in zip(shapes, colors, sides, (first_frame, second_frame))
    )
    return Scene("order", objects, subject=subject)


def _appearance_runs(rng: np.random.Generator, count: int) -> tuple[tuple[int, int], ...]:
    """`count` visible runs, each run and each gap (including the hidden start) at least `MIN_RUN_FRAMES` long."""
    num_segments = 2 * count + 1  # hidden start, then (visible, hidden) pairs, the last hidden stretch may be empty
    spare = NUM_FRAMES - MIN_RUN_FRAMES * (num_segments - 1)
    lengths = rng.multinomial(spare, np.full(num_segments, 1 / num_segments)) + MIN_RUN_FRAMES
    lengths[-1] -= MIN_RUN_FRAMES
    bounds = np.cumsum(lengths)
    return tuple((int(bounds[2 * run]), int(bounds[2 * run + 1])) for run in range(count))


def _count_scene(rng: np.random.Generator, color: str, shape: str, count: str) -> Scene:
    x, y = (float(value) for value in rng.uniform(CENTRE_MIN, CENTRE_MAX, size=2))
    return Scene("count", (SceneObject(shape, color, x, y, visible=_appearance_runs(rng, int(count))),))


SCENE_BUILDERS: dict[str, Callable[..., Scene]] = {
    "static": _static_scene,
    "motion": _motion_scene,
    "order": _order_scene,
    "count": _count_scene,
}
SCENE_ATTRIBUTES: dict[str, dict[str, Sequence]] = {
    "static": {"color": tuple(COLORS), "shape": SHAPES, "position": POSITIONS},
    "motion": {"color": tuple(COLORS), "shape": SHAPES, "direction": DIRECTIONS, "speed": SPEEDS},
    "order": {"color": tuple(COLORS), "shape": SHAPES, "first": SHAPES},
    "count": {"color": tuple(COLORS), "shape": SHAPES, "count": COUNTS},
}
"""Each scene kind's builder arguments, each balanced over its values within a split."""


def _balanced(values: Sequence[T], count: int, rng: np.random.Generator) -> list[T]:
    """`count` draws from `values`, each value as often as any other give or take one, in random order."""
    order = rng.permutation(len(values))
    draws = [values[order[index % len(values)]] for index in range(count)]
    return [draws[index] for index in rng.permutation(count)]


def split_of(scene: Scene) -> str:
    """The split a scene belongs to: a stable hash of its full description, so no scene is in two splits."""
    digest = hashlib.sha256(repr(scene).encode()).digest()
    return SPLITS[int.from_bytes(digest[:8], "big") % len(SPLITS)]


def _draw_scene(kind: str, attributes: Mapping[str, object], split: str, rng: np.random.Generator) -> Scene:
    for _ in range(MAX_SCENE_ATTEMPTS):
        scene = SCENE_BUILDERS[kind](rng, **attributes)
        if split_of(scene) == split:
            return scene
    raise RuntimeError(f"No {kind} scene with {dict(attributes)} belongs to split {split!r}")


def make_scenes(split: str, count: int, seed: int = 0) -> list[Scene]:
    """`count` scenes of `split`: scene kinds and every kind's attributes balanced, deterministic in `seed`."""
    rng = np.random.default_rng((seed, SPLITS.index(split), SCENE_STREAM))
    kinds = _balanced(SCENE_KINDS, count, rng)
    attributes_of = {}
    for kind in SCENE_KINDS:
        indices = [index for index, drawn in enumerate(kinds) if drawn == kind]
        pools = {name: _balanced(values, len(indices), rng) for name, values in SCENE_ATTRIBUTES[kind].items()}
        for position, index in enumerate(indices):
            attributes_of[index] = {name: pool[position] for name, pool in pools.items()}
    return [_draw_scene(kinds[index], attributes_of[index], split, rng) for index in range(count)]


# ---------------------------------------------------------------------------------------------------------------------
# Records in the authors' formats

VideoQuestion = tuple[str, Question]
"""A question with the file stem of the video it is about."""


def video_name(split: str, index: int) -> str:
    """File stem of a split's `index`-th video."""
    return f"{split}_{index:05d}"


def _video_path(name: str) -> str:
    return f"{VIDEO_DIRECTORY}/{name}{VIDEO_EXTENSION}"


def _question_id(name: str, question: Question) -> str:
    return f"{name}_{question.question_type}"


def _conversation(prompt: str, answer: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": prompt}, {"from": "gpt", "value": answer}]


def training_records(items: Sequence[VideoQuestion]) -> list[dict]:
    """Video-LLaVA training examples, one question each."""
    return [
        {
            "id": _question_id(name, question),
            "video": _video_path(name),
            "conversations": _conversation(f"{VIDEO_PLACEHOLDER}\n{question.text}", question.answer),
            "question_type": question.question_type,
        }
        for name, question in items
    ]


def caption_records(names: Sequence[str], scenes: Sequence[Scene]) -> list[dict]:
    """Video-LLaVA alignment examples: every video's caption."""
    return [
        {
            "id": f"{name}_caption",
            "video": _video_path(name),
            "conversations": _conversation(ALIGN_PROMPT, describe(scene)),
            "question_type": "caption",
        }
        for name, scene in zip(names, scenes)
    ]


def evaluation_records(items: Sequence[VideoQuestion]) -> tuple[list[dict], list[dict]]:
    """The authors' open-ended evaluation files: question records and answer records, joined by `question_id`."""
    questions = [
        {
            "video_name": name,
            "question_id": _question_id(name, question),
            "question": question.text,
            "question_type": question.question_type,
        }
        for name, question in items
    ]
    answers = [{"question_id": _question_id(name, question), "answer": question.answer} for name, question in items]
    return questions, answers


def mcq_records(items: Sequence[VideoQuestion], rng: np.random.Generator) -> tuple[list[dict], list[dict]]:
    """The authors' multiple-choice files: every option of the question's type in random order, the answer's
    position (`answer_id`) balanced within each question type."""
    answer_ids: dict[int, int] = {}
    for question_type, options in MCQ_OPTIONS.items():
        indices = [index for index, (_, question) in enumerate(items) if question.question_type == question_type]
        answer_ids.update(zip(indices, _balanced(range(len(options)), len(indices), rng)))
    questions, answers = [], []
    for index, (name, question) in enumerate(items):
        distractors = [option for option in MCQ_OPTIONS[question.question_type] if option != question.answer]
        options = [distractors[position] for position in rng.permutation(len(distractors))]
        options.insert(answer_ids[index], question.answer)
        question_id = _question_id(name, question)
        questions.append(
            {
                "video_name": name,
                "question_id": question_id,
                "question": question.text,
                "question_type": question.question_type,
                "options": options,
                "num_option": len(options),
            }
        )
        answers.append(
            {"video_name": name, "question_id": question_id, "answer_id": answer_ids[index], "answer": question.answer}
        )
    return questions, answers


def majority_baselines(questions: Sequence[Question]) -> dict[str, float]:
    """Per question type, the accuracy of always giving that type's most common answer."""
    counters: dict[str, Counter] = {}
    for question in questions:
        counters.setdefault(question.question_type, Counter())[question.answer] += 1
    return {kind: max(counter.values()) / counter.total() for kind, counter in sorted(counters.items())}


# ---------------------------------------------------------------------------------------------------------------------
# Dataset


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _check_arguments(output_dir: Path, num_videos: Mapping[str, int]) -> None:
    if set(num_videos) - set(SPLITS) or any(not isinstance(n, int) or n < 0 for n in num_videos.values()):
        raise ValueError(f"num_videos must map splits among {SPLITS} to counts >= 0, got {dict(num_videos)}")
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise FileExistsError(f"{output_dir} exists and is not an empty directory; choose a new output directory")


def generate_dataset(
    output_dir: str | Path,
    num_videos: Mapping[str, int] | None = None,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Render the videos and write every file listed in the module docstring to `output_dir` (new or empty).

    `num_videos` maps split names to video counts (default `DEFAULT_NUM_VIDEOS`; a split left out gets no videos).
    The same seed and counts give byte-identical files. Returns the summary also written to `dataset_info.json`.
    """
    output_dir = Path(output_dir)
    num_videos = dict(DEFAULT_NUM_VIDEOS if num_videos is None else num_videos)
    _check_arguments(output_dir, num_videos)
    (output_dir / VIDEO_DIRECTORY).mkdir(parents=True)
    summary = {"seed": seed, "frame_size": FRAME_SIZE, "num_frames": NUM_FRAMES, "fps": FPS, "splits": {}}
    with tqdm(total=sum(num_videos.values()), desc="rendering", unit="video", disable=not progress) as bar:
        for split_index, split in enumerate(SPLITS):
            scenes = make_scenes(split, num_videos.get(split, 0), seed)
            names = [video_name(split, index) for index in range(len(scenes))]
            wording_rng = np.random.default_rng((seed, split_index, QUESTION_STREAM))
            items = [
                (name, question)
                for name, scene in zip(names, scenes)
                for question in scene_questions(scene, wording_rng)
            ]
            for name, scene in zip(names, scenes):
                render_video(scene, output_dir / _video_path(name))
                bar.update()
            _write_split_files(output_dir, split, items, np.random.default_rng((seed, split_index, MCQ_STREAM)))
            if split == "train":
                _write_json(output_dir / "align.json", caption_records(names, scenes))
            questions = [question for _, question in items]
            summary["splits"][split] = {
                "num_videos": len(scenes),
                "num_questions": dict(sorted(Counter(question.question_type for question in questions).items())),
                "majority_baseline": majority_baselines(questions),
            }
    _write_json(output_dir / "dataset_info.json", summary)
    return summary


def _write_split_files(output_dir: Path, split: str, items: Sequence[VideoQuestion], rng: np.random.Generator) -> None:
    """`{split}.json`, and for evaluation splits the open-ended and multiple-choice question and answer files."""
    _write_json(output_dir / f"{split}.json", training_records(items))
    if split not in EVALUATION_SPLITS:
        return
    files = dict(zip(("q", "a"), evaluation_records(items))) | dict(zip(("mcq_q", "mcq_a"), mcq_records(items, rng)))
    for suffix, records in files.items():
        _write_json(output_dir / f"{split}_{suffix}.json", records)


# ---------------------------------------------------------------------------------------------------------------------
# Documentation example

EXAMPLE_SCENE = Scene("motion", (SceneObject("circle", "red", x=15.0, y=32.0, velocity_x=1.25),))
"""A red circle crossing the frame from left to right, fast. Its hash puts it in the test split, so no training
video shows it."""


def render_example(path: str | Path) -> list[Question]:
    """Write the documentation example video (`EXAMPLE_SCENE`) to `path`; return its questions and answers."""
    render_video(EXAMPLE_SCENE, path)
    return scene_questions(EXAMPLE_SCENE)
