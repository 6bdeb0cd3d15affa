"""Peak memory of one fitting step, measured in a fresh process so the number belongs to one method.

``ru_maxrss`` is a process-lifetime high-water mark: measured in the harness it would be the maximum over every method
run so far. Here a child process builds the network, input and optimizer (baseline high-water mark), then runs two
Adam fitting steps (the first allocates the optimizer state) and reports the new high-water mark. On CUDA it reports
``torch.cuda.max_memory_allocated`` around the same steps.

Run: ``python -m lipdeploy.bench.harness.memprobe TICKET.pt HEIGHT WIDTH [--device cpu|cuda] [--threads N]``; prints
JSON. The harness calls it through :func:`probe`.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
from pathlib import Path


def _maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # Linux reports KiB, macOS bytes


def _status_bytes(field: str) -> int | None:
    try:
        for line in open("/proc/self/status", encoding="ascii"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    """Reset the kernel's resident-set high-water mark (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def probe(ticket_path: Path, h: int, w: int, device: str, threads: int) -> dict[str, int]:
    """Run this module on ``ticket_path`` in a fresh interpreter and return its measurement."""
    cmd = [sys.executable, "-m", "lipdeploy.bench.harness.memprobe"]
    cmd += [str(ticket_path), str(h), str(w), "--device", device, "--threads", str(threads)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"memprobe failed: {res.stderr.strip().splitlines()[-1:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("ticket")
    ap.add_argument("height", type=int)
    ap.add_argument("width", type=int)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--steps", type=int, default=2)
    args = ap.parse_args(argv)

    # after parsing: a bad argument fails before torch loads (seconds), in the probe's own subprocess
    import torch

    # with torch (above): loaded after parsing
    from lipdeploy.fit_result import PrunedGradients
    from lipdeploy.networks import make_input
    from lipdeploy.ticket import load_ticket

    if args.threads:
        torch.set_num_threads(args.threads)
    ticket = load_ticket(args.ticket)
    device = torch.device(args.device)
    model = ticket.build("init").to(device)
    params = dict(model.named_parameters())
    pruned = PrunedGradients({params[n]: m for n, m in ticket.masks.items()})  # the fit's gradient masking
    x = make_input(ticket.arch, args.height, args.width).to(device)
    target = torch.rand((1, 3, args.height, args.width), generator=torch.Generator().manual_seed(0)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    # The import of torch alone peaks higher than a small network's step: reset the high-water mark where the
    # kernel allows it, so the step's own peak is measured; else fall back to ru_maxrss (a lower bound of 0 then).
    gc.collect()
    reset = _reset_hwm()
    base = _status_bytes("VmRSS") if reset else _maxrss_bytes()
    for _ in range(args.steps):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(x), target)
        loss.backward()
        pruned()
        opt.step()
    peak = _status_bytes("VmHWM") if reset else _maxrss_bytes()
    out = {"baseline_rss_bytes": base, "peak_rss_bytes": peak, "method": "VmHWM reset" if reset else "ru_maxrss"}
    if device.type == "cuda":
        torch.cuda.synchronize()
        out["cuda_peak_bytes"] = int(torch.cuda.max_memory_allocated())
        out["cuda_baseline_bytes"] = int(base_cuda)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
