"""The machine's GEMM ceilings for bench/run.sh: PyTorch's matmul (MKL for fp32, oneDNN's
AMX / AVX512_BF16 kernels for bf16) on 2048^3 with THREADS threads, best of REPS runs.

    gemm_ceiling.py THREADS [REPS]      prints "fp32 GFLOP/s" and "bf16 GFLOP/s" lines
"""
import sys
import time

import torch


def best(a, b, reps):
    torch.matmul(a, b)
    t = 1e30
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        t = min(t, time.perf_counter() - t0)
    return t


def main():
    threads = int(sys.argv[1])
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    torch.set_num_threads(threads)
    n = 2048
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(n, n, dtype=dt)
        b = torch.randn(n, n, dtype=dt)
        t = best(a, b, reps)
        print(f"{name} {2.0 * n ** 3 / t / 1e9:.1f} GFLOP/s (torch {torch.__version__} matmul {n}^3, "
              f"{threads} threads, MKL {torch.backends.mkl.is_available()}, "
              f"oneDNN {torch.backends.mkldnn.is_available()})", flush=True)


if __name__ == "__main__":
    main()
