"""bench_model_latency counts the CPU of every thread of the process, not only the calling thread's."""
from __future__ import annotations

import threading
import time

import torch

from bench.bench_model_latency import time_window


class OffThreadWork(torch.nn.Module):
    """A model whose forward pass burns about 20 ms of CPU in another thread, as torch's intra-op workers do."""

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        def burn() -> None:
            end = time.thread_time() + 0.02
            while time.thread_time() < end:
                pass

        worker = threading.Thread(target=burn)
        worker.start()
        worker.join()
        return input_values


def test_cpu_per_window_includes_other_threads() -> None:
    _, _, cpu_ms = time_window(OffThreadWork(), torch.zeros(1, 8), repeats=3)
    assert cpu_ms >= 15  # the calling thread alone spends well under 1 ms (it only waits for the worker)
