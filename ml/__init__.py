"""Model code: loading models and tokenizers, devices and dtypes, the sampler's torch side,
re-scoring claimed traces, and the training steps of the pipeline.

It imports only `shared` and the ML libraries, and those (torch, transformers, peft, safetensors,
sentence-transformers) only inside the functions that use them: importing any module here costs
nothing, so the worker's CLI and the coordinator's API can name these types without loading torch.
"""
