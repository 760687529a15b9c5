# The recsys image: the API (`recsys serve`, uvicorn or Ray Serve) and every job (`recsys
# train`, `retrain`, `batch-score`, …), as serving/kubernetes/ and training/schedule/ run it.
#   docker build -t recsys:latest .
#   docker run -p 8000:8000 recsys:latest serve host=0.0.0.0 bundle=/data/artifacts/bundles/…
# engine=ray in the image: add ray.config=/app/serving/config.yaml (the configs live in /app).
# The same pins as `make install`: torch 2.13.0 first, from PyTorch's CPU index (any other
# index gives a multi-GB CUDA build), then recsys under constraints.txt.
FROM python:3.11-slim-bookworm

# haproxy: Ray Serve's high-throughput ingress (recsys.serving.ray_runner.HAPROXY_ENV)
RUN apt-get update \
    && apt-get install -y --no-install-recommends haproxy \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
COPY configs ./configs
COPY serving ./serving
COPY training ./training
COPY index ./index
COPY scripts ./scripts

ARG EXTRAS=serve,postgres
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir --extra-index-url ${TORCH_INDEX} -c constraints.txt torch==2.13.0 \
    && pip install --no-cache-dir --extra-index-url ${TORCH_INDEX} -c constraints.txt -e ".[${EXTRAS}]" \
    && python -c "import torch; v = torch.__version__; assert v.startswith('2.13.0'), v"

ENV WANDB_MODE=offline RAY_USAGE_STATS_ENABLED=0 OMP_NUM_THREADS=1 RECSYS_ROOT=/data
RUN useradd --create-home --uid 10001 recsys && mkdir -p /data && chown recsys /data
USER recsys
EXPOSE 8000
ENTRYPOINT ["recsys"]
CMD ["serve", "host=0.0.0.0"]
