"""Training steps on a trusted machine: supervised fine-tuning (sft) and the GRPO policy update
(grpo), over batches of tokenized examples (batches). The run loops that schedule them, with their
database and queue, are the coordinator's pipeline tasks."""
