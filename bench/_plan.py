"""Which benchmarks the suite runs, in which order, with which arguments in each mode.

`tiny` checks that every script still runs (tests/test_benchmarks.py); `quick` and `default`
measure within the suite's time budget; `full` runs the scripts' own (larger) defaults and the
benchmark that needs 1.5x this machine's RAM of disk. A benchmark without arguments for a mode
is not run in it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Seconds the whole suite may take in each mode; a benchmark still running when the budget is
# spent is stopped and reported as such.
BUDGET_S = {"tiny": 900, "quick": 180, "default": 900, "full": 6 * 3600}


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    args: dict[str, list[str]] = field(default_factory=dict)

    @property
    def script(self) -> str:
        return f"bench/{self.name}.py"


BENCHMARKS = [
    Benchmark(
        "hashing",
        "Hashing against the reference's numpy formulation",
        {
            "tiny": ["--shapes", "1x64,2x64", "--repeats", "1"],
            "quick": ["--shapes", "1x128,8x512,64x4096", "--repeats", "2"],
            "default": [],
            "full": [],
        },
    ),
    Benchmark(
        "gather",
        "Gather against numpy on np.memmap and against sequential copy",
        {
            "tiny": ["--rows", "20000", "--keys", "5000", "--repeats", "1"],
            "quick": ["--rows", "500000", "--keys", "200000", "--repeats", "3"],
            "default": [],
            "full": [],
        },
    ),
    Benchmark(
        "lookups",
        "Lookups: gRPC messages, shared buffers and Redis against in process; LookupTokens",
        {
            "tiny": [
                "--rows",
                "20000",
                "--sizes",
                "100,2000",
                "--repeats",
                "1",
                "--token-batch",
                "2x64",
            ],
            "quick": [
                "--rows",
                "200000",
                "--sizes",
                "1000,10000,100000",
                "--repeats",
                "5",
                "--token-batch",
                "4x512",
            ],
            "default": [],
            "full": [],
        },
    ),
    Benchmark(
        "pushes",
        "Pushes per second, 1 and 4 clients",
        {
            "tiny": ["--rows", "20000", "--batch", "512", "--pushes", "2"],
            "quick": ["--rows", "200000", "--pushes", "8"],
            "default": [],
            "full": [],
        },
    ),
    Benchmark(
        "train_steps",
        "Training steps/s: StoreEmbedding with and without prefetch against LocalEmbedding",
        {
            "tiny": ["--segment", "1", "--rounds", "1", "--batch", "2"],
            "quick": ["--segment", "5", "--rounds", "3"],
            "default": [],
            "full": [],
        },
    ),
    Benchmark(
        "data_parallel",
        "Data-parallel training: 2 ranks, synchronous and asynchronous store against tables in DDP",
        {
            "tiny": ["--steps", "2", "--warmup", "1", "--rounds", "1", "--batch", "2"],
            "quick": ["--steps", "10", "--rounds", "1"],
            "default": [],
            "full": [],
        },
    ),
    Benchmark(
        "hot_rows",
        "Hot-row cache hit rate against the best static cache",
        {
            "tiny": [
                "--rows",
                "100000",
                "--tokens",
                "5000",
                "--percents",
                "1,10",
                "--speed-rows",
                "50000",
                "--speed-tokens",
                "2000",
            ],
            "quick": [
                "--rows",
                "1000000",
                "--tokens",
                "200000",
                "--speed-rows",
                "1000000",
                "--speed-tokens",
                "50000",
            ],
            "default": [],
            "full": [],
        },
    ),
    Benchmark(
        "serving",
        "Serving FP8 rows: dequantizing gather, decode steps, import",
        {
            "tiny": ["--rows", "20000", "--steps", "10", "--repeats", "1", "--device", "cpu"],
            "quick": ["--rows", "100000", "--steps", "50", "--repeats", "2"],
            "default": [],
            "full": [],
        },
    ),
    Benchmark(
        "push_safety",
        "What data safety costs a push (in process)",
        {
            "tiny": ["--rounds", "1", "--rows", "20000", "--batch", "2048"],
            "quick": ["--rounds", "2", "--rows", "200000", "--batch", "16384"],
            "default": ["--rounds", "3"],
            "full": [],
        },
    ),
    Benchmark(
        "load",
        "8 clients mixing lookups and pushes, checkpoints taken meanwhile, against 1 client;"
        " p99 with periodic flushes against without",
        {
            "tiny": [
                "--rows",
                "20000",
                "--seconds",
                "2",
                "--checkpoint-every",
                "1",
                "--lookup-keys",
                "1024",
                "--push-keys",
                "256",
                "--flush-every",
                "0.5",
            ],
            "quick": ["--rows", "200000", "--seconds", "6", "--checkpoint-every", "3"],
            "default": [],
            "full": ["--rows", "2000000", "--seconds", "60"],
        },
    ),
    Benchmark(
        "v41",
        "DeepSeek-V4.1-Flash's reads in process: decode steps and a prefill against the "
        "official lookup",
        {
            "tiny": ["--rows-per-head", "2000", "--prefill-tokens", "1024", "--repeats", "1"],
            "quick": ["--rows-per-head", "20000", "--prefill-tokens", "4096", "--repeats", "3"],
            "default": [],
            "full": [],
        },
    ),
    Benchmark(
        "restore_scale",
        "Restoring many tables: seconds per table at 3,000 tables against at 100",
        {
            "tiny": ["--tables", "300", "--base-tables", "30"],
            "quick": ["--tables", "1000"],
            "default": [],
            "full": [],
        },
    ),
    Benchmark(
        "beyond_ram",
        "A table of 1.5x RAM served: cold, warm and with a hot-row cache against in RAM",
        {"tiny": ["--rows", "50000", "--steps", "5"], "full": []},
    ),
    Benchmark(
        "finetune",
        "Fine-tuning a released model's memory: steps/s, import for training and export",
        {
            "tiny": [
                "--rows-per-head",
                "500",
                "--steps",
                "1",
                "--rounds",
                "1",
                "--import-rows",
                "2000",
            ],
            "quick": ["--steps", "2", "--rounds", "2", "--import-rows", "100000"],
            "default": [],
            "full": [],
        },
    ),
]
