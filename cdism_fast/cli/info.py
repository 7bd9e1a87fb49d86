"""``cdism-fast info``: versions, built extensions, bf16 on this CPU (--amp auto), available backends per op."""
from __future__ import annotations

import platform


def _triton_version() -> str:
    try:
        import triton
    except ImportError as exc:
        return f"not installed ({exc})"
    return triton.__version__


def _print_bf16() -> None:
    """The CPU's bf16 capability and what --amp auto runs each workload in, with the measured reason."""
    from cdism_fast.training.precision import WORKLOADS, bf16_decision

    decision = bf16_decision()
    flags = ", ".join(f"{name} {'yes' if value else 'no'}" for name, value in decision.flags.items())
    print(f"bf16 on the CPU: {decision.cpu} ({flags}; torch kernels {decision.capability})")
    for workload in WORKLOADS:
        choice = decision.choices[workload]
        print(f"  --amp auto, {workload:<6} {'bf16' if choice.bf16 else 'fp32'}: {choice.why}")


def run(args) -> int:
    import torch

    import cdism_fast
    from cdism_fast import _extension, ops

    print(f"cdism_fast {cdism_fast.__version__}")
    print(f"python     {platform.python_version()} ({platform.machine()})")
    print(f"torch      {torch.__version__} (CUDA {torch.version.cuda or 'none: CPU build'}, "
          f"{torch.get_num_threads()} threads)")
    print(f"triton     {_triton_version()}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            print(f"GPU {i}      {torch.cuda.get_device_name(i)}")
    else:
        print("GPU        none visible")
    print()
    _print_bf16()
    print()
    for status in _extension.statuses().values():
        state = f"loaded ({status.how})" if status.loaded else f"MISSING: {status.error}"
        print(f"extension {status.name:<20} {state}")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print()
    for device in devices:
        print(f"ops on {device} (float32), in the order backend='auto' tries them:")
        for name in sorted(ops.registered_ops()):
            usable = ops.available_backends(name, device)
            print(f"  {name:<20} {', '.join(usable) or '-'}")
            for backend, reason in ops.unavailable_backends(name, device).items():
                if reason.startswith("runs on"):
                    continue  # another device's backend: not a problem to report
                print(f"  {'':<20}   {backend}: {reason}")
    return 0
