# The coordinator image: API server and background-task workers (no GPU, no torch).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends bubblewrap && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY coordinator ./coordinator
COPY verifier ./verifier
COPY worker ./worker
COPY flywheel ./flywheel
RUN pip install --no-cache-dir ".[coordinator]"
RUN useradd --create-home flywheel
USER flywheel
EXPOSE 8000
CMD ["flywheel", "coordinator", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
