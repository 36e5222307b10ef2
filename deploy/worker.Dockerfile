# The Flywheel volunteer worker: CUDA runtime, PyTorch, vLLM and the openflywheel package.
#
#   docker build -f deploy/worker.Dockerfile -t flywheel-worker .
#   docker run -d --gpus all --name flywheel-worker --restart unless-stopped -v flywheel-worker:/state \
#     -e FLYWHEEL_WORKER_COORDINATOR=https://flywheel.example.org -e FLYWHEEL_WORKER_TOKEN=fw_... \
#     -e FLYWHEEL_WORKER_MODEL=Qwen/Qwen2.5-0.5B-Instruct flywheel-worker
#
# Pause / resume / status:  docker exec flywheel-worker flywheel worker pause   (or resume, status)
# Every option is a FLYWHEEL_WORKER_* variable (docs/worker.md); the engine defaults to vLLM here
# (FLYWHEEL_WORKER_ENGINE=transformers for the bundled engine). The /state volume holds the spool
# of unacknowledged results, the pause state and the daily count, and the model cache: a new
# container resumes where the old one stopped.
FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv tini ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/flywheel
ENV PATH=/opt/flywheel/bin:$PATH

# vLLM pins its own torch build; installing it first keeps that pin.
RUN pip install "vllm>=0.10.2"
COPY pyproject.toml README.md /src/
COPY flywheel /src/flywheel
COPY shared /src/shared
COPY ml /src/ml
COPY worker /src/worker
RUN pip install "/src[vllm]" && rm -rf /src

RUN useradd --system --uid 10001 --home-dir /state --shell /usr/sbin/nologin flywheel \
 && mkdir -p /state && chown flywheel:flywheel /state
USER flywheel
ENV HOME=/state HF_HOME=/state/huggingface \
    FLYWHEEL_WORKER_STATE_DIR=/state/worker FLYWHEEL_WORKER_ENGINE=vllm FLYWHEEL_WORKER_PROGRESS=plain
VOLUME /state

# tini forwards SIGTERM (clean stop) and SIGUSR1/SIGUSR2 (pause/resume) to the worker.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tini", "--", "flywheel", "worker"]
CMD ["run"]
