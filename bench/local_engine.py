"""Local engine throughput: batching engine vs a plain diffusers pipeline, same weights and device.

The model is a StableDiffusionPipeline with random (seeded) weights at the real size of a 512 px
one-step turbo model: sd-turbo's UNet, VAE, text encoder and scheduler configs (SD 2.1 base
architecture, ~1.3 B parameters), so every forward pass costs what the real one costs. Nothing is
downloaded: the CLIP tokenizer is a generated one-char-per-token vocabulary.

Two servers of one-image requests (each with its own prompt and seed; turbo settings: 1 step,
guidance_scale 0) share that one pipeline object, so weights, device, dtype and settings match:

  plain   what a naive server does: one pipeline call per request, in a worker thread
          (asyncio.to_thread), one call at a time behind an asyncio.Lock (a pipeline is not safe
          to call from two threads at once: the scheduler's state is shared).
  engine  imagegate.engine.runner.Engine: requests queue up while a batch runs, and the next
          batch serves every compatible waiting request with one pipeline call.

Per concurrency level C, a closed loop of C clients sends requests back to back; plain then engine
run one after the other, so machine noise hits both. It reports images/s, latency p50/p95, the
engine's mean batch size and the engine/plain throughput ratio. Before measuring, both sides are
warmed up (one request; the engine also one batch of the largest size measured) and the engine's
image for a (prompt, seed) is compared with the plain pipeline's.

    .venv/bin/python bench/local_engine.py                  # CPU: 128 px, 1/4/16 clients
    .venv/bin/python bench/local_engine.py --quick          # reduced model, 64 px: a smoke run
    .venv/bin/python bench/local_engine.py --device cuda --json /tmp/engine.json   # 512 px
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from imagegate.engine.describe import Checkpoint
from imagegate.engine.loader import LoadedModel, generator_device, pick_device, pick_dtype, prepare_for_serving
from imagegate.engine.pipelines import Job
from imagegate.engine.runner import Engine

# sd-turbo (stabilityai/sd-turbo, SD 2.1 base architecture): unet/, vae/ and text_encoder/ configs.
UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "attention_head_dim": (5, 10, 20, 20),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "cross_attention_dim": 1024,
    "use_linear_projection": True,
    "norm_num_groups": 32,
}
VAE: dict[str, Any] = {
    "sample_size": 768,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "norm_num_groups": 32,
    "scaling_factor": 0.18215,
}
TEXT: dict[str, Any] = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_hidden_layers": 23,
    "hidden_act": "gelu",
    "projection_dim": 512,
    "vocab_size": 49408,
    "max_position_embeddings": 77,
}
SCHEDULER: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "timestep_spacing": "trailing",
    "steps_offset": 1,
}
# --quick: the same layout at a fraction of the width and depth (seconds to build and run).
QUICK = {
    "unet": {
        "block_out_channels": (32, 64, 128, 128),
        "attention_head_dim": (1, 2, 4, 4),
        "layers_per_block": 1,
        "cross_attention_dim": 128,
    },
    "vae": {"block_out_channels": (32, 64, 64, 64), "layers_per_block": 1},
    "text": {
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "projection_dim": 64,
    },
}
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
SEED = 1234


def clip_tokenizer() -> CLIPTokenizer:
    """A CLIP BPE tokenizer with one token per printable ASCII char (no merges), built offline."""
    chars = [chr(code) for code in range(33, 127)]
    tokens = chars + [char + "</w>" for char in chars] + [BOS, EOS]
    with tempfile.TemporaryDirectory() as scratch:
        vocab, merges = Path(scratch, "vocab.json"), Path(scratch, "merges.txt")
        vocab.write_text(json.dumps({token: i for i, token in enumerate(tokens)}), encoding="utf-8")
        merges.write_text("#version: 0.2\n", encoding="utf-8")
        return CLIPTokenizer(str(vocab), str(merges), model_max_length=77)


def build_pipeline(quick: bool, device: str, dtype: torch.dtype) -> Any:
    torch.manual_seed(0)
    tokenizer = clip_tokenizer()
    unet = UNet2DConditionModel(**(UNET | QUICK["unet"] if quick else UNET))
    vae = AutoencoderKL(**(VAE | QUICK["vae"] if quick else VAE))
    text = CLIPTextModel(
        CLIPTextConfig(
            **(TEXT | QUICK["text"] if quick else TEXT),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler(**SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    for module in (unet, vae, text):
        module.eval()
    # Models are built in float32; casting to float32 again only logs a warning.
    pipe = pipe.to(device=device) if dtype == torch.float32 else pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def prompt(i: int) -> str:
    return f"a studio photo of bench subject number {i}, soft light"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


async def closed_loop(
    send: Callable[[int], Awaitable[Any]], clients: int, total: int, first: int
) -> tuple[float, list[float]]:
    """`clients` workers send requests first..first+total-1 back to back; (wall seconds, latencies)."""
    latencies: list[float] = []
    counter = iter(range(first, first + total))

    async def worker() -> None:
        for i in counter:
            started = time.perf_counter()
            await send(i)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return time.perf_counter() - started, latencies


def summary(wall: float, latencies: list[float]) -> dict[str, float]:
    return {
        "images_per_s": len(latencies) / wall,
        "wall_s": wall,
        "p50_s": percentile(latencies, 0.5),
        "p95_s": percentile(latencies, 0.95),
    }


async def bench(args: argparse.Namespace, pipe: Any, model: LoadedModel) -> dict[str, Any]:
    size, steps, gen_device = args.size, args.steps, generator_device(model.device)
    lock = asyncio.Lock()

    def call_plain(i: int) -> Any:
        with torch.inference_mode():  # as in the engine's run_batch: the difference measured is batching only
            return pipe(
                prompt=[prompt(i)],
                generator=[torch.Generator(gen_device).manual_seed(SEED + i)],
                num_inference_steps=steps,
                guidance_scale=0.0,
                height=size,
                width=size,
                output_type="pil",
            ).images[0]

    async def plain(i: int) -> Any:
        async with lock:
            return await asyncio.to_thread(call_plain, i)

    levels: list[int] = args.concurrency
    engine = Engine(model, max_batch_images=args.max_batch, max_queued_images=max(64, max(levels)))

    async def submit(i: int) -> Any:
        job = Job(
            task="text2image",
            prompt=prompt(i),
            seeds=[SEED + i],
            width=size,
            height=size,
            steps=steps,
            guidance_scale=0.0,
        )
        return (await engine.submit(job)).images[0]

    def max_diff(a: Any, b: Any) -> int:
        return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())

    try:
        # Warm-up (untimed), doubling as the correctness check: request 0 alone on both sides, then
        # one full engine batch that holds request 0 again.
        started = time.perf_counter()
        reference = await plain(0)
        diff_single = max_diff(await submit(0), reference)
        warm_batch = min(args.max_batch, max(levels))
        batch = await asyncio.gather(*(submit(i) for i in range(warm_batch)))
        diff_batched = max_diff(batch[0], reference)
        warm_s = time.perf_counter() - started
        print(
            f"warm-up {warm_s:.1f}s; max abs pixel diff engine vs plain for the same (prompt, seed): "
            f"{diff_single} at batch 1, {diff_batched} at batch {warm_batch}",
            file=sys.stderr,
            flush=True,
        )
        rows, first = [], 1000
        for level_index, clients in enumerate(levels):
            total = args.requests[level_index] if args.requests else max(args.min_requests, 2 * clients)
            runs: dict[str, list[dict[str, float]]] = {"plain": [], "engine": []}
            lat: dict[str, list[float]] = {"plain": [], "engine": []}
            for rep in range(args.repeat):
                order = ("plain", "engine") if rep % 2 == 0 else ("engine", "plain")
                for side in order:
                    before = (engine.stats.batches, engine.stats.images)
                    wall, latencies = await closed_loop(plain if side == "plain" else submit, clients, total, first)
                    first += total
                    run = summary(wall, latencies)
                    if side == "engine":
                        run["mean_batch"] = (engine.stats.images - before[1]) / (engine.stats.batches - before[0])
                    runs[side].append(run)
                    lat[side] += latencies
                    print(
                        f"  C={clients} {side}: {total} images in {wall:.1f}s, {run['images_per_s']:.3f} img/s",
                        file=sys.stderr,
                        flush=True,
                    )
            row: dict[str, Any] = {"concurrency": clients, "requests": total, "repeat": args.repeat}
            for side in ("plain", "engine"):
                row[side] = {
                    "images_per_s": statistics.median(r["images_per_s"] for r in runs[side]),
                    "p50_s": percentile(lat[side], 0.5),
                    "p95_s": percentile(lat[side], 0.95),
                    "runs": runs[side],
                }
            row["engine"]["mean_batch"] = statistics.mean(r["mean_batch"] for r in runs["engine"])
            row["ratio"] = row["engine"]["images_per_s"] / row["plain"]["images_per_s"]
            rows.append(row)
    finally:
        await engine.aclose()
    return {
        "warmup_s": warm_s,
        "max_abs_diff_batch1": diff_single,
        "max_abs_diff_batched": diff_batched,
        "warm_batch": warm_batch,
        "levels": rows,
    }


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        f"device {meta['device']} ({meta['device_name']}), dtype {meta['dtype']}, torch {meta['torch']}, "
        f"diffusers {meta['diffusers']}, {meta['threads']} torch threads, model {meta['model']}",
        f"{meta['size']}x{meta['size']} px, {meta['steps']} step(s), guidance 0, one image per request, "
        f"engine max batch {meta['max_batch']}; build {meta['build_s']:.0f}s, warm-up {result['warmup_s']:.0f}s",
        f"load average (1/5/15 min) at start {meta['load_start']}, at end {meta['load_end']}",
        f"correctness: max abs pixel diff engine vs plain {result['max_abs_diff_batch1']} at batch 1, "
        f"{result['max_abs_diff_batched']} at batch {result['warm_batch']}",
        "",
        "| clients | requests | plain img/s | engine img/s | engine/plain | plain p50 s | plain p95 s "
        "| engine p50 s | engine p95 s | mean engine batch |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["levels"]:
        plain, engine = row["plain"], row["engine"]
        lines.append(
            f"| {row['concurrency']} | {row['requests']} | {plain['images_per_s']:.3f} | {engine['images_per_s']:.3f} "
            f"| {row['ratio']:.2f}x | {plain['p50_s']:.2f} | {plain['p95_s']:.2f} | {engine['p50_s']:.2f} "
            f"| {engine['p95_s']:.2f} | {engine['mean_batch']:.1f} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    parser.add_argument(
        "--dtype",
        choices=["auto", "float16", "float32", "bfloat16"],
        default="auto",
        help="auto: float32 on the CPU, float16 on accelerators",
    )
    parser.add_argument(
        "--size", type=int, help="square image side in px (default 128 on the CPU, 512 elsewhere; 64 with --quick)"
    )
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--concurrency", type=int, nargs="+", help="client counts (default 1 4 16; --quick 1 4)")
    parser.add_argument(
        "--requests",
        type=int,
        nargs="+",
        help="requests per level: one value for all, or one per level (default max(4, 2*clients); "
        "--quick max(2, clients))",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per side and level; the median img/s is reported")
    parser.add_argument("--max-batch", type=int, default=16, help="the engine's max_batch_images")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: a REDUCED model (same layout, a fraction "
        "of the width and depth: not the real compute), 64 px, few requests",
    )
    args = parser.parse_args(argv)
    args.concurrency = args.concurrency or ([1, 4] if args.quick else [1, 4, 16])
    if args.requests and len(args.requests) not in (1, len(args.concurrency)):
        parser.error("--requests takes one value, or one per --concurrency level")
    if args.requests and len(args.requests) == 1:
        args.requests = args.requests * len(args.concurrency)
    args.min_requests = 2 if args.quick else 4
    if args.quick and args.requests is None:
        args.requests = [max(2, c) for c in args.concurrency]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", "__array__ implementation doesn't accept a copy keyword", DeprecationWarning)
    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    args.size = args.size or (64 if args.quick else 128 if device == "cpu" else 512)
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"building the {'reduced (--quick)' if args.quick else 'real-size'} model on {device} ...",
        file=sys.stderr,
        flush=True,
    )
    started = time.perf_counter()
    pipe = build_pipeline(args.quick, device, dtype)
    # What the engine's loader does to every pipeline it serves (on the CPU: the VAE decodes a
    # batch image by image). The plain side shares the object; its one-image calls are unaffected.
    prepare_for_serving(pipe, device)
    build_s = time.perf_counter() - started
    params = sum(p.numel() for m in (pipe.unet, pipe.vae, pipe.text_encoder) for p in m.parameters())
    print(f"built in {build_s:.1f}s ({params / 1e6:.0f}M parameters)", file=sys.stderr, flush=True)
    checkpoint = Checkpoint(
        source="random/sd-turbo-shaped",
        path=Path("."),
        is_hub=False,
        pipeline_class="StableDiffusionPipeline",
        kind="text2image",
        native_side=512,
        multiple_of=8,
    )
    result = asyncio.run(bench(args, pipe, LoadedModel(checkpoint, base=pipe, device=device, dtype=dtype)))
    result["meta"] = {
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "threads": torch.get_num_threads(),
        "device_name": torch.cuda.get_device_name()
        if device.startswith("cuda")
        else platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "model": f"{'reduced (--quick)' if args.quick else 'sd-turbo-sized'}, random weights, {params / 1e6:.0f}M params",
        "size": args.size,
        "steps": args.steps,
        "max_batch": args.max_batch,
        "build_s": build_s,
        "load_start": load_start,
        "load_end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    print(markdown(result))
    top = next((row for row in result["levels"] if row["concurrency"] == 16), None)
    if top is None:
        print("\n16 concurrent requests not measured: the 1.5x target is not checked.")
    else:
        verdict = "MEETS" if top["ratio"] >= 1.5 else "DOES NOT MEET"
        print(
            f"\nAt 16 concurrent requests the engine serves {top['ratio']:.3f}x the plain pipeline's "
            f"images/s: {verdict} the 1.5x target."
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
