"""Long videos window by window on the CPU: seconds of compute per minute of video, split into decoding (demux,
decode and the per-encoder transforms of every window, one pass), encoding (the four encoders and the fusion, per
window) and generating (the language model's prefill and the answer, per window); results: benchmarks/README.md.

The long video is real: the pancake clip (../shared/media) remuxed `--repeats` times end to end (its H.264 packets
copied with shifted time stamps, nothing re-encoded), 426x240, 30 fps. The default model, float32, greedy answers of
`--max-new-tokens` tokens; each stage is timed in its own pass over the windows (the decoding pass as
`answer_windows` runs it, the encoders and the language model on its pixels).

    python benchmarks/bench_windows.py [--repeats 12] [--window-seconds 10] [--max-new-tokens 8]
"""

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import av
import torch
from transformers import AutoModel, AutoProcessor

from transformers_merv import default_model_path
from transformers_merv.inference.prefix_cache import answer_questions, prefill_pixels
from transformers_merv.inference.windows import DEFAULT_CAPTION_PROMPT, window_pixels

from bench_inference import PANCAKE, report
from timing import Timing


SECONDS_PER_MINUTE = 60


def remux_repeated(source: Path, repeats: int, target: Path) -> None:
    """`source`'s video packets `repeats` times end to end into `target` (time stamps shifted, no re-encoding)."""
    with av.open(str(source)) as probe:
        stream = probe.streams.video[0]
        packets = [packet for packet in probe.demux(stream) if packet.size]
        step = round(1 / (stream.average_rate * stream.time_base))
        span = max(packet.pts for packet in packets) - min(packet.pts for packet in packets) + step
    with av.open(str(target), "w") as output:
        for repeat in range(repeats):
            with av.open(str(source)) as container:
                stream = container.streams.video[0]
                if repeat == 0:
                    out_stream = output.add_stream_from_template(stream)
                for packet in container.demux(stream):
                    if not packet.size:
                        continue
                    packet.pts += repeat * span
                    packet.dts += repeat * span
                    packet.stream = out_stream
                    output.mux(packet)


def per_minute(timing: Timing, minutes: float) -> str:
    return f"{timing.wall / minutes:.2f} s (CPU {timing.cpu / minutes:.2f} s)"


def timed(function) -> tuple[Timing, object]:
    """The wall-clock and CPU seconds of `function()`, and its result."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return Timing(time.perf_counter() - wall, time.process_time() - cpu), result


@torch.inference_mode()
def measure_stages(
    model, processor, video: Path, window_seconds: float, max_new_tokens: int
) -> tuple[dict[str, Timing], int]:
    """Time spent decoding, encoding and generating over every window of `video`, and the number of windows."""
    decoding, windows = timed(lambda: list(window_pixels(processor, video, window_seconds)))
    encoding, _ = timed(lambda: [model.get_video_features(pixels) for _, _, pixels in windows])
    generation = {"max_new_tokens": max_new_tokens, "min_new_tokens": max_new_tokens, "do_sample": False}

    def answer_all() -> None:
        for _, _, pixels in windows:
            answer_questions(
                model, processor, prefill_pixels(model, processor, pixels), [DEFAULT_CAPTION_PROMPT], **generation
            )

    encode_and_generate, _ = timed(answer_all)
    generating = Timing(encode_and_generate.wall - encoding.wall, encode_and_generate.cpu - encoding.cpu)
    return {"decode": decoding, "encode": encoding, "generate": generating}, len(windows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=12, help="copies of the 10.3-s pancake clip (12: 2 min 4 s)")
    parser.add_argument("--window-seconds", type=float, default=10.0)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    args = parser.parse_args()
    model = AutoModel.from_pretrained(default_model_path(), dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(default_model_path())
    with tempfile.TemporaryDirectory() as folder:
        video = Path(folder) / "long.mkv"
        remux_repeated(PANCAKE, args.repeats, video)
        with av.open(str(video)) as container:
            frames = sum(1 for packet in container.demux(video=0) if packet.size)
        minutes = frames / 30 / SECONDS_PER_MINUTE
        load_before = os.getloadavg()[0]
        stages, count = measure_stages(model, processor, video, args.window_seconds, args.max_new_tokens)
    total = Timing(sum(stage.wall for stage in stages.values()), sum(stage.cpu for stage in stages.values()))
    report(
        f"{minutes * SECONDS_PER_MINUTE:.0f}-s video ({frames} frames), {count} windows of "
        f"{args.window_seconds:g} s, {args.max_new_tokens} new tokens each",
        {
            **{f"{name} per minute of video": per_minute(stage, minutes) for name, stage in stages.items()},
            "total per minute of video": f"{per_minute(total, minutes)}; {total.wall / count:.2f} s per window",
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), PyAV {av.__version__}; load average {load_before:.1f} before, "
            f"{os.getloadavg()[0]:.1f} after",
        },
    )


if __name__ == "__main__":
    main()
