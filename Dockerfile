# pytc-service image: the REST service, the Dask scheduler and the GPU workers all run from it.
#   CPU (default):  docker build -t pytc-service .
#   CUDA:           docker build -t pytc-service:cuda \
#                     --build-arg BASE_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 \
#                     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 .
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PYTC_DATA_ROOTS=/data PYTC_STATE_DIR=/data/.pytc PYTC_HOST=0.0.0.0 PYTC_PORT=8000

# CUDA base images come without Python; the slim image has it already.
RUN if ! command -v python3 >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-pip python3-venv \
      && rm -rf /var/lib/apt/lists/*; fi \
    && python3 -m venv /opt/pytc
ENV PATH=/opt/pytc/bin:$PATH

# torch first, from the index matching the base image, pinned to the range the project supports
RUN pip install --index-url ${TORCH_INDEX} "torch>=2.10,<=2.14.1"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY volumes ./volumes
COPY models ./models
COPY workers ./workers
COPY service ./service
RUN pip install . && rm -rf /src

RUN useradd --create-home --uid 1000 pytc && mkdir -p /data && chown pytc /data
USER pytc
WORKDIR /data
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python3 -c "import urllib.request,os; urllib.request.urlopen('http://127.0.0.1:%s/livez' % os.environ.get('PYTC_PORT','8000'))" || exit 1
CMD ["pytc-serve"]
