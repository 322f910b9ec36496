"""The study end to end: every run's cost, planned before, and the runner that executes the notebooks in order.

- `costs`: every run the tables need, with its cost timed on this device (the dry run, the GPU check)
- `runner`: executes the notebooks in order (python -m partwhole.workflow.runner)
"""
from .costs import study_runs

__all__ = ["study_runs"]
