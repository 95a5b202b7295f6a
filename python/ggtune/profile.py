"""Where an iteration's time goes: phases (data, forward+backward, optimizer) and kernels.

Kernel times come from a proxy around ``ggtune._core`` that times every call, labelled by
function name and, for the quantized matmuls, by the weight type.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict

import gguf

# kernel -> position of its ggml weight-type argument
WEIGHT_TYPE_ARG = {"matmul": 2, "matmul_backward": 2, "get_rows": 1}


class Profiler:
    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.phases: dict[str, float] = defaultdict(float)
        self.kernels: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    @contextlib.contextmanager
    def phase(self, name: str):
        if not self.enabled:
            yield
            return
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] += time.perf_counter() - start

    def wrap(self, module):
        """``module`` itself when disabled, else a proxy whose functions are timed."""
        return _TimedModule(module, self) if self.enabled else module

    def report(self, iteration: int) -> str:
        """One block of text for this iteration, then the counters start again."""
        total = sum(self.phases.values()) or 1e-12
        lines = [f"profile of iteration {iteration}: {total * 1e3:.1f} ms"]
        lines += [f"  {name:<28} {t * 1e3:9.1f} ms {100 * t / total:5.1f}%"
                  for name, t in sorted(self.phases.items(), key=lambda kv: -kv[1])]
        kernel_total = sum(self.kernels.values())
        lines.append(f"  kernels {kernel_total * 1e3:.1f} ms; python and numpy glue "
                     f"{max(self.phases.get('forward+backward', 0.0) - kernel_total, 0.0) * 1e3:.1f} ms")
        lines += [f"    {name:<26} {t * 1e3:9.1f} ms {100 * t / total:5.1f}%  ({self.calls[name]} calls)"
                  for name, t in sorted(self.kernels.items(), key=lambda kv: -kv[1])]
        self.phases.clear()
        self.kernels.clear()
        self.calls.clear()
        return "\n".join(lines)


class _TimedModule:
    def __init__(self, module, profiler: Profiler):
        self._module, self._profiler = module, profiler

    def __getattr__(self, name):
        fn = getattr(self._module, name)
        profiler = self._profiler

        def timed(*args, **kwargs):
            label = name
            if name in WEIGHT_TYPE_ARG and len(args) > WEIGHT_TYPE_ARG[name]:
                label = f"{name}[{_type_name(args[WEIGHT_TYPE_ARG[name]])}]"
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                profiler.kernels[label] += time.perf_counter() - start
                profiler.calls[label] += 1

        return timed


def _type_name(ggml_type: int) -> str:
    try:
        return gguf.GGMLQuantizationType(ggml_type).name
    except ValueError:
        return str(ggml_type)
