"""Capacity model: Gemma on vLLM scaling on its queue, the router spilling to Gemini meanwhile.

A day is simulated minute by minute (standard library only; `--plot` needs matplotlib):

- Turns arrive at a rate that follows an hourly curve (turns per second). A share of them start a new
  conversation; the rest continue one.
- The router (`auto`, graph/policies) sends a *new* conversation to Gemini while vLLM has
  `router_spill_waiting` requests waiting (vllm:num_requests_waiting, read through gemma-service, i.e.
  from one replica: the per-replica figure). Continuing turns stay on Gemma. A turn that would wait longer
  than `first_token_timeout_s` for its first token is answered by Gemini after that timeout (the router's
  fallback).
- A vLLM replica (`gpus_per_replica` L4s, tensor parallel) runs up to `max_num_seqs` sequences at once.
  Decoding is memory-bandwidth bound: each step reads the replica's share of the weights once plus every
  running sequence's KV cache, so a step takes longer as the batch grows, but far less than in proportion
  (`step_s`): throughput keeps rising with the batch while each sequence slows down. Prefill is
  compute-bound and shares the GPUs with decoding. One turn holds a sequence for its prefill plus
  `answer_tokens` steps; the batch and the step time are solved together from the load (`service_s`).
  Below saturation the wait follows M/M/c (Erlang C) with c = ready replicas x max_num_seqs; above it a
  fluid queue builds up. `max_num_seqs` above what the KV cache holds at the modelled context is refused.
- The HPA (deploy/base/gemma-hpa.yaml) sees vLLM's gauges `metric_lag_min` minutes late (scrape, Cloud
  Monitoring, adapter) and wants the larger of ceil(waiting / target_waiting) and
  ceil(running / target_running) replicas (waiting alone reads 0 as soon as a new replica has drained
  the queue, and the HPA would remove it again: the model showed that oscillation), adds at most one
  replica per `scale_up_period_min`, removes one per `scale_down_period_min` after
  `scale_down_window_min` minutes of lower demand. A new replica serves `cold_start_min` minutes after
  the decision (GPU node, image, weights, load) and is billed from the decision on (Autopilot bills the
  GPU node).

Per hour it reports replicas, queue depth per replica, the share of turns answered by Gemini, the p95 time
to first token, GPU hours and Gemini's token cost. The defaults are estimates, not measurements (see
DEFAULTS_SOURCES: every input's source, published where one exists); replace them with `vllm bench serve`
figures from your own deployment.

    python deploy/capacity/simulate.py                       # the documented example day, as a table
    python deploy/capacity/simulate.py --max-replicas 3 --json
    python deploy/capacity/simulate.py --plot day.png
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import deque
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cached_property

# An office-hours day (turns per second, hour 0-23, UTC of the users): quiet night, a morning ramp, a
# lunch dip, an afternoon peak. Scale it to your own traffic.
EXAMPLE_DAY = (
    0.05, 0.04, 0.03, 0.03, 0.03, 0.05, 0.10, 0.30, 1.60, 2.00, 2.40, 2.20,
    1.40, 2.00, 2.60, 2.50, 1.90, 1.00, 0.50, 0.30, 0.20, 0.15, 0.10, 0.06,
)  # fmt: skip

DEFAULTS_SOURCES = {
    "gpus_per_replica": (
        "deploy/base/gemma-deployment.yaml (nvidia.com/gpu, --tensor-parallel-size). Google's GKE sample "
        "for this model (kubernetes-engine-samples ai-ml/llm-serving-gemma/vllm/vllm-3-12b-it.yaml) uses 2 "
        "L4s with --tensor-parallel-size=2 and --max-num-seqs=4; `--gpus-per-replica 2` models it"
    ),
    "weights_gb": (
        "google/gemma-3-12b-it model card: 12.2 B parameters (incl. the vision encoder), bf16 = 2 bytes each"
    ),
    "kv_layers_global": (
        "google/gemma-3-12b-it config.json (text_config): 48 layers, sliding_window_pattern 6 = every sixth "
        "layer attends globally (8), the other 40 to a window of sliding_window 1024 tokens"
    ),
    "kv_bytes_per_token_per_layer": (
        "config.json: num_key_value_heads 8 x head_dim 256 x (K and V) x 2 bytes (bf16 KV cache) = 8 KiB"
    ),
    "gpu_memory_gb": "NVIDIA L4 datasheet: 24 GB GDDR6 per GPU",
    "hbm_gb_s": "NVIDIA L4 datasheet: 300 GB/s memory bandwidth per GPU",
    "bandwidth_efficiency": (
        "0.7 of the datasheet bandwidth, as a published vLLM benchmark_serving run on one L4 implies "
        "(Llama 3.2 11B Vision FP8, ShareGPT, 1,000 prompts: 285 output tok/s at a mean TPOT of 54.8 ms, "
        "i.e. ~15.6 sequences per step reading ~11.4 GB of weights and KV cache: 208 GB/s = 69 %)"
    ),
    "step_overhead_ms": (
        "estimate: per decoding step, 2 all-reduces per layer x 48 layers over PCIe (the L4 has no NVLink) "
        "at ~30 us each with 4 GPUs (~3 ms; ~2 ms with 2), plus ~2 ms for scheduling and sampling"
    ),
    "activation_reserve_gb_per_gpu": (
        "estimate: activations, CUDA graphs and NCCL buffers that vLLM keeps outside the KV cache"
    ),
    "prefill_tokens_per_s_per_gpu": (
        "estimate: ~2 x 12e9 FLOP per prompt token against 121 dense bf16 TFLOPS per L4 (NVIDIA L4 "
        "datasheet) at ~40 % utilisation: ~2,000 tokens/s per GPU"
    ),
    "max_num_seqs": (
        "deploy/base/kustomization.yaml gemma-config; 64 keeps each sequence at ~15 tokens/s (people read "
        "5-10 words/s) and within the KV cache: 131 sequences at the modelled context on 4 L4s, ~38 at the "
        "full 16,384 tokens (vLLM then preempts and recomputes, it does not fail)"
    ),
    "target_running": (
        "gemma-autoscaling GEMMA_TARGET_RUNNING: half of max_num_seqs, because the sequences running grow "
        "steeply near saturation (each runs slower as the batch grows): at 32 the second replica is asked "
        "for at ~1.4 turns/s, before the first saturates at ~1.9 (python deploy/capacity/simulate.py "
        "--target-running 48: it oscillates and spills)"
    ),
    "cold_start_min": "docs/cold-start.md: node, streamed image, weights from Cloud Storage, load, graphs",
    "gemini_ttft_s": "estimate for gemini-2.5-flash with thinking off (HYBRID_CHAT_GEMINI_THINKING_BUDGET=0)",
    "gemini_usd_per_mtok_in": "Vertex AI pricing page, Gemini 2.5 Flash text input (check the current price)",
    "gemini_usd_per_mtok_out": "Vertex AI pricing page, Gemini 2.5 Flash output (check the current price)",
    "usd_per_gpu_hour": (
        "docs/deploy.md cost notes: a 4x L4 replica (GPUs, 16 vCPU, 96 GiB) is roughly USD 4-5 per hour on "
        "demand, ~USD 1.1 per L4 with its share of CPU and memory"
    ),
}


@dataclass(frozen=True)
class Params:
    turns_per_s: tuple[float, ...] = EXAMPLE_DAY  # 24 hourly rates
    prompt_tokens: int = 1200  # prompt incl. the history window
    answer_tokens: int = 350
    new_conversation_share: float = 0.25  # ~4 turns per conversation
    # vLLM, one replica (deploy/base/gemma-deployment.yaml, kustomization.yaml gemma-config)
    gpus_per_replica: int = 4
    max_num_seqs: int = 64
    gpu_memory_utilization: float = 0.90
    # Gemma 3 12B and the L4 (DEFAULTS_SOURCES)
    weights_gb: float = 24.4
    kv_layers_global: int = 8
    kv_layers_local: int = 40
    sliding_window: int = 1024
    kv_bytes_per_token_per_layer: int = 8192
    gpu_memory_gb: float = 24.0
    hbm_gb_s: float = 300.0
    bandwidth_efficiency: float = 0.7
    step_overhead_ms: float = 5.0
    activation_reserve_gb_per_gpu: float = 1.5
    prefill_tokens_per_s_per_gpu: float = 2000.0
    ttft_overhead_s: float = 0.1
    # Router (HYBRID_CHAT_AUTO_GEMMA_MAX_WAITING, HYBRID_CHAT_FIRST_TOKEN_TIMEOUT_S)
    router_spill_waiting: float = 2.0
    first_token_timeout_s: float = 30.0
    # HPA (deploy/base/gemma-hpa.yaml, gemma-autoscaling)
    min_replicas: int = 1
    max_replicas: int = 2
    target_waiting: float = 1.0
    target_running: float = 32.0  # vllm:num_requests_running per replica (of max_num_seqs)
    tolerance: float = 0.1
    metric_lag_min: int = 2
    scale_up_period_min: int = 5
    scale_down_window_min: int = 30
    scale_down_period_min: int = 10
    cold_start_min: int = 10
    # Gemini and money
    gemini_ttft_s: float = 0.8
    gemini_usd_per_mtok_in: float = 0.30
    gemini_usd_per_mtok_out: float = 2.50
    usd_per_gpu_hour: float = 1.125

    def __post_init__(self) -> None:
        if len(self.turns_per_s) != 24 or min(self.turns_per_s) < 0:
            raise ValueError("turns_per_s needs 24 non-negative hourly rates")
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ValueError("need 1 <= min_replicas <= max_replicas")
        if not 0 <= self.new_conversation_share <= 1:
            raise ValueError("new_conversation_share must be within 0..1")
        if self.kv_cache_gb <= 0:
            raise ValueError(
                f"{self.weights_gb} GB of weights leave no KV cache on {self.gpus_per_replica} GPUs"
            )
        if self.max_num_seqs > self.kv_sequences:
            raise ValueError(
                f"max_num_seqs {self.max_num_seqs} exceeds the {self.kv_sequences} sequences the KV cache "
                f"({self.kv_cache_gb:.1f} GB) holds at {self.mean_context_tokens} tokens of context"
            )

    # --- One replica, from the model's shape and the GPU's datasheet ---------------------------------
    @property
    def usd_per_replica_hour(self) -> float:
        return self.usd_per_gpu_hour * self.gpus_per_replica

    @property
    def mean_context_tokens(self) -> int:
        """Tokens a sequence holds in the KV cache on average while it decodes."""
        return self.prompt_tokens + self.answer_tokens // 2

    @property
    def kv_gb_per_sequence(self) -> float:
        ctx = self.mean_context_tokens
        tokens = self.kv_layers_global * ctx + self.kv_layers_local * min(ctx, self.sliding_window)
        return tokens * self.kv_bytes_per_token_per_layer / 1e9

    @property
    def kv_cache_gb(self) -> float:
        per_gpu = self.gpu_memory_gb * self.gpu_memory_utilization - self.activation_reserve_gb_per_gpu
        return per_gpu * self.gpus_per_replica - self.weights_gb

    @property
    def kv_sequences(self) -> int:
        return int(self.kv_cache_gb / self.kv_gb_per_sequence)

    def step_s(self, batch: float) -> float:
        """One decoding step with `batch` sequences: every GPU reads its share of weights and KV cache."""
        read_gb = (self.weights_gb + batch * self.kv_gb_per_sequence) / self.gpus_per_replica
        return self.step_overhead_ms / 1000 + read_gb / (self.hbm_gb_s * self.bandwidth_efficiency)

    @property
    def prefill_s(self) -> float:
        return self.prompt_tokens / (self.prefill_tokens_per_s_per_gpu * self.gpus_per_replica)

    @property
    def ttft_base_s(self) -> float:
        return self.ttft_overhead_s + self.prefill_s

    def _held_s(self, turns_per_s: float, batch: float) -> float:
        """A turn's time in its sequence slot: prefill, then answer_tokens steps at this batch, slowed by
        the share of the GPUs' time the arriving turns' prefills take."""
        busy = min(0.99, turns_per_s * self.prefill_s)
        return self.ttft_base_s + self.answer_tokens * self.step_s(batch) / (1 - busy)

    def service_s(self, turns_per_s: float) -> float:
        """How long one turn holds a sequence slot when a replica serves `turns_per_s` (below saturation).

        The batch is the sequences running (Little's law: rate x time held), capped at max_num_seqs:
        solved by bisection, since the time held grows with the batch."""
        lo, hi = 1.0, float(self.max_num_seqs)
        if turns_per_s * self._held_s(turns_per_s, hi) <= hi:
            for _ in range(60):
                mid = (lo + hi) / 2
                if turns_per_s * self._held_s(turns_per_s, mid) > mid:
                    lo = mid
                else:
                    hi = mid
        return self._held_s(turns_per_s, hi)

    @cached_property
    def replica_turns_per_s(self) -> float:
        """Saturation: the rate at which max_num_seqs sequences are running (rate x time held = slots)."""
        lo, hi = 0.0, 0.99 / self.prefill_s
        for _ in range(80):
            mid = (lo + hi) / 2
            if mid * self._held_s(mid, self.max_num_seqs) < self.max_num_seqs:
                lo = mid
            else:
                hi = mid
        return lo

    @property
    def decode_tokens_per_s_per_seq(self) -> float:
        return 1 / self.step_s(self.max_num_seqs)


@dataclass
class Hour:
    hour: int
    turns: float = 0.0
    gemma_turns: float = 0.0
    gemini_turns: float = 0.0
    spilled_by_router: float = 0.0
    timed_out: float = 0.0
    replicas_avg: float = 0.0  # billed (ready + starting)
    ready_avg: float = 0.0
    waiting_per_replica_max: float = 0.0
    p95_ttft_s: float = 0.0
    gpu_hours: float = 0.0
    gpu_usd: float = 0.0
    gemini_usd: float = 0.0
    groups: list[tuple[float, str, tuple[float, ...]]] = field(default_factory=list, repr=False)

    @property
    def spill_share(self) -> float:
        return self.gemini_turns / self.turns if self.turns else 0.0

    def row(self) -> dict[str, float]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "groups"}
        out["spill_share"] = self.spill_share
        return out


def erlang_c(servers: int, offered: float) -> float:
    """Probability that an arrival waits in M/M/c (offered load = lambda/mu, below `servers`)."""
    if offered <= 0:
        return 0.0
    if offered >= servers:
        return 1.0
    term, total = 1.0, 1.0  # sum_{k<c} a^k/k!, iteratively
    for k in range(1, servers):
        term *= offered / k
        total += term
    last = term * offered / servers * servers / (servers - offered)
    return last / (total + last)


def _survival(t: float, kind: str, args: tuple[float, ...]) -> float:
    """P(TTFT > t) within one group of turns."""
    if kind == "step":
        return 1.0 if t < args[0] else 0.0
    base, wait_prob, rate, cap = args  # Erlang C: no wait, or an exponential wait, cut at the timeout
    if t < base:
        return 1.0
    if t >= cap:
        return 0.0
    return wait_prob * math.exp(-rate * (t - base)) if rate > 0 else wait_prob


def _p95(groups: list[tuple[float, str, tuple[float, ...]]]) -> float:
    total = sum(w for w, _, _ in groups)
    if total <= 0:
        return 0.0
    lo, hi = 0.0, 1.0
    while sum(w * _survival(hi, k, a) for w, k, a in groups) / total > 0.05:
        hi *= 2
    for _ in range(50):
        mid = (lo + hi) / 2
        if sum(w * _survival(mid, k, a) for w, k, a in groups) / total > 0.05:
            lo = mid
        else:
            hi = mid
    return hi


def simulate(p: Params) -> list[Hour]:
    hours = [Hour(h) for h in range(24)]
    ready = p.min_replicas
    starting: deque[int] = deque()  # minute at which each starting replica becomes ready
    queue = 0.0  # backlog above saturation: turns waiting for a vLLM sequence (all replicas)
    waiting = 0.0  # what vllm:num_requests_waiting shows (summed): the backlog or Erlang C's mean queue
    lag = p.metric_lag_min + 1
    metric_history: deque[tuple[float, float]] = deque([(0.0, 0.0)] * lag, maxlen=lag)
    desired_history: deque[int] = deque(maxlen=p.scale_down_window_min)
    last_up = last_down = -(10**9)
    cap_per_replica = p.replica_turns_per_s

    for minute in range(24 * 60):
        h = hours[minute // 60]
        while starting and starting[0] <= minute:
            starting.popleft()
            ready += 1

        rate = p.turns_per_s[minute // 60]
        arrivals = rate * 60
        capacity = ready * cap_per_replica  # turns per second
        waiting_per_replica = waiting / ready if ready else math.inf

        # Router: new conversations avoid a vLLM that queues.
        new = arrivals * p.new_conversation_share
        spill = new if waiting_per_replica >= p.router_spill_waiting else 0.0
        to_gemma = arrivals - spill

        # vLLM: fluid queue above saturation; turns that would wait past the first-token timeout fall back.
        queue = max(0.0, queue + to_gemma - capacity * 60)
        max_queue = capacity * p.first_token_timeout_s
        timed_out = max(0.0, queue - max_queue)
        queue -= timed_out
        gemma = to_gemma - timed_out

        # Time to first token, per group of turns of this minute, and the queue vLLM reports.
        servers = ready * p.max_num_seqs
        service = p.service_s(gemma / 60 / ready) if ready else p.service_s(0.0)
        offered = (gemma / 60) * service  # sequences busy on average
        waiting = queue
        if gemma > 0:
            backlog_wait = queue / capacity if capacity else 0.0
            if offered < servers and backlog_wait == 0:
                c = erlang_c(servers, offered)
                rate_out = (servers - offered) / service
                cap = p.first_token_timeout_s + p.gemini_ttft_s  # past the timeout Gemini answers
                h.groups.append((gemma, "mmc", (p.ttft_base_s, c, rate_out, cap)))
                waiting = c * offered / (servers - offered)  # Erlang C mean queue length
            else:
                h.groups.append((gemma, "step", (p.ttft_base_s + backlog_wait,)))
        if spill > 0:
            h.groups.append((spill, "step", (p.gemini_ttft_s,)))
        if timed_out > 0:
            h.groups.append((timed_out, "step", (p.first_token_timeout_s + p.gemini_ttft_s,)))

        h.turns += arrivals
        h.gemma_turns += gemma
        h.gemini_turns += spill + timed_out
        h.spilled_by_router += spill
        h.timed_out += timed_out
        billed = ready + len(starting)
        h.replicas_avg += billed / 60
        h.ready_avg += ready / 60
        h.gpu_hours += billed * p.gpus_per_replica / 60
        h.gpu_usd += billed * p.usd_per_replica_hour / 60
        gemini_turns = spill + timed_out
        h.gemini_usd += (
            gemini_turns
            * (p.prompt_tokens * p.gemini_usd_per_mtok_in + p.answer_tokens * p.gemini_usd_per_mtok_out)
            / 1e6
        )
        waiting_per_replica = waiting / ready if ready else 0.0
        h.waiting_per_replica_max = max(h.waiting_per_replica_max, waiting_per_replica)

        # HPA, on the lagged metrics. A Pod without the metric yet (starting) counts as 0 when scaling up,
        # so the wanted count is the total over ready replicas divided by the per-replica target.
        running = servers if queue else min(servers, offered)
        metric_history.append((waiting, running))
        seen_waiting, seen_running = metric_history[0]
        current = ready + len(starting)
        want = max(
            math.ceil(seen_waiting / p.target_waiting - 1e-9),
            math.ceil(seen_running / p.target_running - 1e-9),
        )
        desired = want if abs(want / current - 1) > p.tolerance else current
        desired = min(p.max_replicas, max(p.min_replicas, desired))
        desired_history.append(desired)
        if desired > current and minute - last_up >= p.scale_up_period_min:
            starting.append(minute + p.cold_start_min)
            last_up = minute
        elif (
            max(desired_history) < current
            and len(desired_history) == desired_history.maxlen
            and minute - last_down >= p.scale_down_period_min
        ):
            if starting:
                starting.pop()
            else:
                ready -= 1
            last_down = minute

    for h in hours:
        h.p95_ttft_s = _p95(h.groups)
    return hours


def summary(hours: list[Hour]) -> dict[str, float]:
    turns = sum(h.turns for h in hours)
    return {
        "turns": turns,
        "gemma_turns": sum(h.gemma_turns for h in hours),
        "gemini_turns": sum(h.gemini_turns for h in hours),
        "spill_share": sum(h.gemini_turns for h in hours) / turns if turns else 0.0,
        "p95_ttft_s_worst_hour": max(h.p95_ttft_s for h in hours),
        "gpu_hours": sum(h.gpu_hours for h in hours),
        "gpu_usd": sum(h.gpu_usd for h in hours),
        "gemini_usd": sum(h.gemini_usd for h in hours),
    }


def table(hours: list[Hour]) -> str:
    lines = [
        "| hour | turns/s | replicas (ready) | max waiting/replica | to Gemini | p95 TTFT s | GPU h "
        "| GPU USD | Gemini USD |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for h in hours:
        lines.append(
            f"| {h.hour:02d} | {h.turns / 3600:.2f} | {h.replicas_avg:.1f} ({h.ready_avg:.1f}) | "
            f"{h.waiting_per_replica_max:.1f} | {h.spill_share:.0%} | {h.p95_ttft_s:.1f} | "
            f"{h.gpu_hours:.1f} | {h.gpu_usd:.2f} | {h.gemini_usd:.2f} |"
        )
    s = summary(hours)
    lines.append(
        f"| day | {s['turns'] / 86400:.2f} | | | {s['spill_share']:.0%} | "
        f"{s['p95_ttft_s_worst_hour']:.1f} (worst) | {s['gpu_hours']:.0f} | {s['gpu_usd']:.0f} | "
        f"{s['gemini_usd']:.2f} |"
    )
    return "\n".join(lines)


def plot(hours: list[Hour], path: str, p: Params) -> None:  # pragma: no cover - optional output
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [h.hour + 0.5 for h in hours]
    fig, (a, b, c) = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    a.step(x, [h.turns / 3600 for h in hours], where="mid", label="turns/s")
    a.step(x, [h.ready_avg * p.replica_turns_per_s for h in hours], where="mid", label="ready Gemma capacity")
    a.set_ylabel("turns/s")
    a.legend(loc="upper left")
    b.step(x, [h.replicas_avg for h in hours], where="mid", label="replicas (billed)")
    b.step(x, [h.ready_avg for h in hours], where="mid", label="replicas ready")
    b.set_ylabel("replicas")
    b.legend(loc="upper left")
    c.bar(x, [100 * h.spill_share for h in hours], width=0.8, label="% answered by Gemini")
    c2 = c.twinx()
    c2.plot(x, [h.p95_ttft_s for h in hours], color="black", marker=".", label="p95 TTFT (s)")
    c.set_ylabel("% to Gemini")
    c2.set_ylabel("p95 TTFT s")
    c.set_xlabel("hour of day")
    c.legend(loc="upper left")
    c2.legend(loc="upper right")
    fig.suptitle(f"Gemma {p.min_replicas}-{p.max_replicas} replicas, cold start {p.cold_start_min} min")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for f in fields(Params):
        if f.name == "turns_per_s":
            continue
        ap.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the example day's rates")
    ap.add_argument("--json", action="store_true", help="per-hour rows and the day's summary as JSON")
    ap.add_argument("--plot", metavar="PNG", help="write a plot (needs matplotlib)")
    args = ap.parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in fields(Params) if f.name != "turns_per_s"}
    p = replace(Params(), **values, turns_per_s=tuple(r * args.scale for r in EXAMPLE_DAY))
    hours = simulate(p)
    if args.json:
        json.dump({"params": asdict(p), "hours": [h.row() for h in hours], "day": summary(hours)}, sys.stdout)
    else:
        print(
            f"one replica ({p.gpus_per_replica}x L4): {p.replica_turns_per_s:.2f} turns/s at saturation "
            f"({p.max_num_seqs} sequences x {p.service_s(p.replica_turns_per_s):.1f} s per turn, "
            f"{p.decode_tokens_per_s_per_seq:.0f} tokens/s each; KV cache for {p.kv_sequences}), "
            f"TTFT {p.ttft_base_s:.2f} s unloaded\n"
        )
        print(table(hours))
    if args.plot:
        plot(hours, args.plot, p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
