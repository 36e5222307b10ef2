"""Downstream jobs the coordinator schedules: selection, distillation (SFT), GRPO, evaluation.

Importing the package hands leasing its view of GRPO rollouts (`coordinator.jobs.service.Rollouts`):
leasing depends on that protocol, not on the pipeline. Every process that leases or validates
imports the package (the app mounts its routes; validation resolves artifact models through it).
"""

from coordinator.jobs import service as _jobs
from coordinator.pipeline import rl as _rl

_jobs.serve_rollouts(_rl)
