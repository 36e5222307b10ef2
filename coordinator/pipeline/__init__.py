"""Downstream jobs the coordinator schedules: selection, distillation (SFT), GRPO, evaluation."""
