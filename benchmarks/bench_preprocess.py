"""Preprocessing benchmarks for `MervVideoProcessor` and `video_io` (results: benchmarks/README.md).

1. Decode once for all encoders vs decoding separately per encoder, on ../shared/media/flipping_a_pancake.mkv.
2. Sampling 32 frames from a 10-minute low-resolution video (generated here with PyAV into a temporary directory,
   MP4 and the same packets remuxed to Matroska) vs from the 10-second pancake clip, and vs the same video cut to
   10 s; peak memory of each read.
3. Colour conversion of decoded frames to RGB: one converter per frame (`frame.to_ndarray(format="rgb24")`, what
   `video_io` did before) vs one shared `VideoReformatter` (what it does now), on the shipped example video and the
   pancake clip.

    python benchmarks/bench_preprocess.py [--repeats 5] [--long-minutes 10]
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from functools import partial
from itertools import islice
from pathlib import Path

import av
from av.video.reformatter import VideoReformatter
import numpy as np
import torch

from transformers_merv import MervVideoProcessor
from transformers_merv.video_io import read_video

from timing import measure


PANCAKE = Path(__file__).resolve().parents[1].parent / "shared" / "media" / "flipping_a_pancake.mkv"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "example.mp4"
ENCODERS = ("languagebind", "dinov2", "vivit", "siglip")
SAMPLED_FRAMES = 32
SYNTHETIC_FPS = 30
SYNTHETIC_SIZE = (90, 160)  # height, width
SHORT_SECONDS = 10
GOPS = {"250 frames (x264 default)": 250, "60 frames (2 s)": 60}
KIB_PER_MIB = 1024


def bench_decode_once(repeats: int) -> list[tuple[str, str]]:
    together = MervVideoProcessor()
    separate = [MervVideoProcessor(vision_encoders=(name,)) for name in ENCODERS]
    timings = measure(
        {"once": lambda: together(PANCAKE), "each": lambda: [processor(PANCAKE) for processor in separate]}, repeats
    )
    once, each = timings["once"], timings["each"]
    return [
        ("pancake, 4 encoders, decode once: `MervVideoProcessor()(video)`", str(once)),
        ("pancake, one `MervVideoProcessor(vision_encoders=(name,))` per encoder: 4 decodes", str(each)),
        ("**speed-up of decoding once**", f"**{each.ratio(once)}**"),
    ]


def decode_to_rgb(video: Path, reformatter: VideoReformatter | None) -> list[np.ndarray]:
    """The first `SAMPLED_FRAMES` frames as RGB arrays, converted per frame or by one shared `reformatter`."""
    with av.open(str(video)) as container:
        frames = islice(container.decode(video=0), SAMPLED_FRAMES)
        if reformatter is None:
            return [frame.to_ndarray(format="rgb24") for frame in frames]
        return [reformatter.reformat(frame, format="rgb24").to_ndarray() for frame in frames]


def bench_colour_conversion(repeats: int) -> list[tuple[str, str]]:
    rows = []
    for video in (EXAMPLE, PANCAKE):
        shared = VideoReformatter()
        timings = measure(
            {
                "per frame": partial(decode_to_rgb, video, None),
                "shared": partial(decode_to_rgb, video, shared),
            },
            repeats,
        )
        before, after = timings["per frame"], timings["shared"]
        rows.append(
            (
                f"decode {video.name}, first {SAMPLED_FRAMES} frames to RGB: a converter per frame -> one shared",
                f"{before} -> {after}: **{before.ratio(after)}**",
            )
        )
    return rows


def make_video(path: Path, seconds: int, gop: int) -> Path:
    """MP4 of a moving gradient with a moving block; x264 with B-frames, like common encodes."""
    height, width = SYNTHETIC_SIZE
    rows, cols = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=SYNTHETIC_FPS, options={"x264-params": "bframes=3:b-adapt=0"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        for index in range(seconds * SYNTHETIC_FPS):
            frame = np.empty((height, width, 3), dtype=np.uint8)
            frame[..., 0] = (cols + index) % 256
            frame[..., 1] = (rows * 2 + index // 3) % 256
            frame[..., 2] = index % 256
            top, left = (index // 2) % (height - 16), index % (width - 16)
            frame[top : top + 16, left : left + 16] = 255
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def remux_to_matroska(source: Path) -> Path:
    """The same packets in a Matroska file, whose header states no frame count."""
    target = source.with_suffix(".mkv")
    with av.open(str(source)) as inputs, av.open(str(target), "w", format="matroska") as outputs:
        stream = outputs.add_stream_from_template(inputs.streams.video[0])
        for packet in inputs.demux(video=0):
            if packet.dts is not None:
                packet.stream = stream
                outputs.mux(packet)
    return target


def peak_memory_mib(path: Path) -> float:
    """Peak resident memory added by one `read_video` call, measured in a fresh process."""
    result = subprocess.run(
        [sys.executable, __file__, "--measure-memory", str(path)], capture_output=True, text=True, check=True
    )
    return float(result.stdout.strip())


def measure_memory(path: str) -> None:
    """Linux: reset the process's peak resident size (`clear_refs` 5), read, report the new peak minus the start."""
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    read_video(path, SAMPLED_FRAMES)
    print((_status_kib("VmHWM") - before) / KIB_PER_MIB)


def _status_kib(field: str) -> int:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1])


def bench_long_video(repeats: int, long_minutes: int) -> list[tuple[str, str]]:
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for gop_name, gop in GOPS.items():
            short_mp4 = make_video(Path(folder) / f"short_{gop}.mp4", SHORT_SECONDS, gop)
            long_mp4 = make_video(Path(folder) / f"long_{gop}.mp4", long_minutes * 60, gop)
            for short, long in ((short_mp4, long_mp4), (remux_to_matroska(short_mp4), remux_to_matroska(long_mp4))):
                reads = {path: partial(read_video, path, SAMPLED_FRAMES) for path in (PANCAKE, short, long)}
                timings = measure(reads, repeats)
                pancake, short_time, long_time = timings[PANCAKE], timings[short], timings[long]
                rows.append(
                    (
                        f"`read_video`, 32 frames: {long_minutes} min {long.suffix[1:]}, keyframe every {gop_name}",
                        f"{long_time} = **{long_time.ratio(pancake)}** the pancake ({pancake}); "
                        f"{long_time.ratio(short_time)} the same video cut to {SHORT_SECONDS} s ({short_time}); "
                        f"peak memory +{peak_memory_mib(long):.1f} MiB ({SHORT_SECONDS} s: "
                        f"+{peak_memory_mib(short):.1f} MiB)",
                    )
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--long-minutes", type=int, default=10)
    parser.add_argument("--measure-memory", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_memory:
        measure_memory(args.measure_memory)
        return
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "av": av.__version__,
        "torch": torch.__version__,
        "load average before": os.getloadavg(),
    }
    print(f"machine: {json.dumps(machine)}; median of {args.repeats} interleaved rounds after a warm-up round\n")
    print("| measurement | result |\n|---|---|")
    rows = bench_decode_once(args.repeats) + bench_colour_conversion(args.repeats)
    for name, value in rows + bench_long_video(args.repeats, args.long_minutes):
        print(f"| {name} | {value} |")
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
