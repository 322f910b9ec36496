"""Every bound of tests/test_multigpu.py can fail: each mutation below is a mistake multi-process training code
can make, applied to a copy of lib/; the test is run against that copy and must fail naming the bound it was
written for (others may fail beside it). About two minutes a mutation on 2 CPU cores, so not part of `make test`:

    .venv/bin/python tests/multigpu_mutations.py
"""
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from test_multigpu import BOUNDS  # noqa: E402

ROOT = Path(__file__).parents[1]

# (the bound it must break, what the mistake is, file under lib/partwhole, text, replacement)
MUTATIONS = [
    (BOUNDS[0], "BatchNorm statistics of each rank's half batch, not synced", "core/distributed.py",
     "self.learn.model, self.sync_bn = GlooSyncBatchNorm.convert(self.learn.model), False",
     "self.sync_bn = False"),
    (BOUNDS[1], "each rank's share starts one image early (one image twice, one never)", "core/distributed.py",
     "order[step * batch + self.rank * share : step * batch + (self.rank + 1) * share]",
     "order[step * batch + self.rank * (share - 1) : step * batch + self.rank * (share - 1) + share]"),
    (BOUNDS[2], "--set seed is dropped, so another seed trains on the same batch", "study/profiles.py",
     "    return overrides\n\n\n# The parameters every notebook shares",
     "    overrides.pop('seed', None)\n    return overrides\n\n\n# The parameters every notebook shares"),
    (BOUNDS[3], "the epoch's train loss is rank 0's shares only", "method/train.py",
     "            torch.distributed.all_reduce(totals)\n", ""),
    (BOUNDS[4], "the learning rate scaled by the number of processes", "method/train.py",
     "learn.fit_one_cycle(epochs, profile.lr,", "learn.fit_one_cycle(epochs, profile.lr * max(1, num_distrib()),"),
]


def mutated_copy(folder: Path, file: str, text: str, replacement: str) -> Path:
    shutil.copytree(ROOT / "lib", folder / "lib", ignore=shutil.ignore_patterns("__pycache__"))
    path = folder / "lib" / "partwhole" / file
    source = path.read_text()
    assert source.count(text) == 1, f"{file} no longer holds the mutated text once: update this mutation"
    path.write_text(source.replace(text, replacement))
    return folder / "lib"


def main() -> int:
    missed = 0
    for bound, mistake, file, text, replacement in MUTATIONS:
        with tempfile.TemporaryDirectory() as folder:
            lib = mutated_copy(Path(folder), file, text, replacement)
            done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                   str(ROOT / "tests" / "test_multigpu.py")], capture_output=True, text=True,
                                  cwd=folder, env=os.environ | {"PYTHONPATH": str(lib)})
        output = done.stdout + done.stderr
        broken = [b for b in BOUNDS if b + ":" in output]
        caught = done.returncode != 0 and bound in broken
        missed += not caught
        print(f"{'caught' if caught else 'MISSED'}: {mistake} ({file})\n  must break: {bound}\n  broke: "
              f"{'; '.join(broken) or 'nothing'} (exit code {done.returncode})", flush=True)
        if not broken and done.returncode:
            print(output[-2000:])
    print(f"{len(MUTATIONS) - missed} of {len(MUTATIONS)} mutations caught by the bound written for them")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
