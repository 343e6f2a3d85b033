"""Run the CPU benchmarks and write BENCHMARKS.md (`make bench`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import cpu_kernels, dataset, identity, serving, train

if __name__ == "__main__":
    dataset.main()
    identity.main([])
    train.main()
    cpu_kernels.main()
    serving.main()
    print("wrote", Path(__file__).resolve().parents[1] / "BENCHMARKS.md")
