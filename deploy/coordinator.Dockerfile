# The coordinator image: API server, migrations and background-task workers.
#
#   docker build -f deploy/coordinator.Dockerfile -t flywheel-coordinator .
#
# EXTRAS picks the package extras: `coordinator` alone serves the API and verification; `train`
# adds torch, transformers and `datasets`, which validation by re-scoring, pipeline jobs and
# dataset problem imports need. TORCH_INDEX picks the torch build: the CPU wheels by default (a
# few hundred MiB), a CUDA index (https://download.pytorch.org/whl/cu128) for the GPU validators;
# the NVIDIA container runtime supplies the driver. docker-compose.yml builds both.
FROM python:3.11-slim
ARG EXTRAS=coordinator,train
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update && apt-get install -y --no-install-recommends bubblewrap && rm -rf /var/lib/apt/lists/*
# torch first, from its own index: the worker extra's `torch>=2.2` is then already met, so pip
# keeps this build instead of the default wheel (which bundles CUDA whether wanted or not).
RUN case ",$EXTRAS," in *,worker,*|*,train,*) pip install --index-url "$TORCH_INDEX" "torch==$TORCH_VERSION";; esac
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY ml ./ml
COPY coordinator ./coordinator
COPY verifier ./verifier
COPY worker ./worker
COPY flywheel ./flywheel
RUN pip install ".[$EXTRAS]"
# /data exists and belongs to the service user, so a fresh named volume mounted there (which
# copies the mount point's ownership) is writable: artifacts, the Hugging Face model cache.
RUN useradd --create-home flywheel && mkdir /data && chown flywheel:flywheel /data
USER flywheel
ENV FLYWHEEL_DATA_DIR=/data HF_HOME=/data/huggingface
EXPOSE 8000
CMD ["flywheel", "coordinator", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
