"""Memory: how much a run needs and how much the machine has free.

    est = memory_estimate(name, n_parameters, ...)   # bytes: weights, train, eval, total
    free = available_memory("cpu")                   # bytes, or None where it cannot be told

train.check_fits compares the two before a run allocates anything, so that a model too
big for the machine is one line naming its settings, not an allocator's traceback or a
process the kernel kills with its MLflow run left RUNNING.
"""

from __future__ import annotations

import os
import re
import resource

import torch


def is_out_of_memory(e: BaseException) -> bool:
    """Whether an exception is an allocator's refusal (CPU or CUDA), not a bug."""
    text = str(e).lower()
    return isinstance(e, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in text \
        or "out of memory" in text or "not enough memory" in text


def format_count(n: int) -> str:
    """1834567890 -> '1.8 G', 12345678 -> '12.3 M', 12345 -> '12,345'."""
    return f"{n / 1e9:.1f} G" if n >= 1e9 else f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n:,}"


# Floats that training keeps for the backward pass, per image pixel, per layer and per
# hidden feature (measured with fp32 on a CPU, rounded up): the Diagonal BiLSTM's skewed
# map is twice as wide and both of its directions keep gates and states; the multiscale
# model runs two of them; the convolutional models keep a few maps per layer.
ACTIVATION_FLOATS = {"pixel_cnn": 24, "gated_pixel_cnn": 16, "row_lstm": 16, "diagonal_bilstm": 52,
                     "pixel_rnn": 52, "multiscale_pixel_rnn": 64}


def memory_estimate(name: str, n_parameters: int, n_buffer_values: int, image_shape, levels: int, *,
                    hidden_dims: int, recurrent_length: int, out_hidden_dims: int, out_recurrent_length: int,
                    batch_size: int, eval_batch_size: int) -> dict[str, int]:
    """Bytes that training this model needs, roughly and on the safe side (fp32):

    - weights: 4 copies of every parameter (the weights, their gradients and up to two
      optimizer slots: Adam's two moments, RMSprop's one) x 4 bytes, plus the buffers
      (the masks of masked convolutions);
    - train: the activations one training batch keeps for backward:
      4 bytes x batch_size x H x W x (F x hidden_dims x (recurrent_length + 2)
      + out_hidden_dims x out_recurrent_length x 3 + C x levels x 4), with F the
      model's ACTIVATION_FLOATS (the + 2: the first layer, the skew and the residual
      stream), the out_... term the 1x1 output layers and the last the logits, their
      softmax and its gradient;
    - eval: the same for one evaluation batch, without backward: about two layers live
      at a time, 4 bytes x eval_batch_size x H x W x (F x hidden_dims x 2 + the same
      output and logits terms);
    - total: weights + the larger of train and eval (evaluation runs after the
      training batches' activations are freed).
    """
    C, H, W = image_shape
    F = ACTIVATION_FLOATS.get(name, max(ACTIVATION_FLOATS.values()))
    head = out_hidden_dims * out_recurrent_length * 3 + C * levels * 4
    weights = 4 * 4 * n_parameters + 4 * n_buffer_values
    train = 4 * batch_size * H * W * (F * hidden_dims * (recurrent_length + 2) + head)
    evaluate = 4 * eval_batch_size * H * W * (F * hidden_dims * 2 + head)
    return {"weights": weights, "train": train, "eval": evaluate, "total": weights + max(train, evaluate)}


def _read_kb(path: str, field: str) -> int | None:
    """Bytes of a `Field:  N kB` line of a /proc file, or None."""
    try:
        with open(path) as f:
            found = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
    except OSError:
        return None
    return int(found.group(1)) * 1024 if found else None


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_room() -> int | None:
    """Bytes left under this process's cgroup (v2) memory limit, or None without one. The
    page cache of files counts in memory.current but the kernel gives it back on demand,
    so it counts as free here (a container that has read its data is not full)."""
    try:
        with open("/proc/self/cgroup") as f:
            group = next((line.split("::", 1)[1].strip() for line in f if line.startswith("0::")), None)
    except OSError:
        return None
    if group is None:
        return None
    cap, used = _read_int(f"/sys/fs/cgroup{group}/memory.max"), _read_int(f"/sys/fs/cgroup{group}/memory.current")
    if cap is None or used is None:
        return None
    try:
        with open(f"/sys/fs/cgroup{group}/memory.stat") as f:
            cache = next((int(line.split()[1]) for line in f if line.startswith("file ")), 0)
    except (OSError, ValueError):
        cache = 0
    return cap - used + cache


def _address_space_room() -> int | None:
    """Bytes left under `ulimit -v` (RLIMIT_AS), or None without one."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    return soft - (_read_kb("/proc/self/status", "VmSize") or 0)


def _cpu_available() -> int | None:
    """Bytes this process may still allocate: MemAvailable, within the cgroup's limit and
    the address-space limit where those are set; None where none of them can be read."""
    limits = [n for n in (_read_kb("/proc/meminfo", "MemAvailable"), _cgroup_room(), _address_space_room())
              if n is not None]
    if not limits and "SC_AVPHYS_PAGES" in getattr(os, "sysconf_names", {}):
        limits.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    return max(min(limits), 0) if limits else None


def available_memory(device: torch.device | str) -> int | None:
    """Free bytes on the device a model would train on (CUDA: what the driver reports
    free; CPU: see _cpu_available); None where that cannot be told."""
    device = torch.device(device)
    if device.type == "cuda":
        if device.index is None:  # this process's GPU: under torchrun its LOCAL_RANK, before set_device
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)  # ours to reuse
        return int(torch.cuda.mem_get_info(device)[0]) + cached
    if device.type == "cpu":
        return _cpu_available()
    return None


__all__ = ["ACTIVATION_FLOATS", "memory_estimate", "available_memory", "format_count", "is_out_of_memory"]
