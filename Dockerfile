# pytc-service image: the REST service (default command), the Dask scheduler and the workers all
# run from it.
#
#   CPU (default):
#     docker build -t pytc-service .
#   NVIDIA GPUs: PyTorch's CUDA wheels carry their own CUDA and cuDNN libraries, so the slim base
#   only needs the host's driver (NVIDIA container toolkit) and the CUDA wheel index:
#     docker build -t pytc-service --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
#   Or on a CUDA base image (Python 3.11 is installed when the base lacks it):
#     docker build -t pytc-service \
#       --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04 \
#       --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
#   PyTorch's cu124 wheels end at torch 2.6: pick the CUDA index that serves the pinned torch
#   (https://pytorch.org/get-started/locally/ lists them) and a driver new enough for it.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG PYTHON=python3.11
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTC_DATA_ROOTS=/data PYTC_STATE_DIR=/data/.pytc PYTC_HOST=0.0.0.0 PYTC_PORT=8000

# CUDA base images come without Python 3.11 (Ubuntu 22.04 ships 3.10): install it there.
RUN if ! command -v ${PYTHON} >/dev/null; then \
      apt-get update \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${PYTHON} ${PYTHON}-venv \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
    && ${PYTHON} -m venv /opt/pytc
ENV PATH=/opt/pytc/bin:$PATH

# Every runtime dependency at the version the tests passed with: constraints.txt (`make lock`).
# torch first, from the index that matches the hardware, at the version constraints.txt names (the
# index decides the build, +cpu or +cu128); the package's own install then finds it satisfied and
# does not fetch another build, and puts torch's own dependencies at their locked versions.
WORKDIR /src
COPY constraints.txt ./
RUN pip install --index-url ${TORCH_INDEX} "$(grep -E '^torch==' constraints.txt)"
COPY pyproject.toml README.md ./
COPY volumes ./volumes
COPY models ./models
COPY workers ./workers
COPY service ./service
RUN pip install -c constraints.txt . && rm -rf /src

# Unprivileged. /data is where the compose file mounts the shared data; HOME is writable for any
# uid so that `user:` can match the owner of a bind-mounted data folder.
RUN useradd --create-home --home-dir /home/pytc --uid 1000 pytc \
    && chmod 1777 /home/pytc \
    && mkdir -p /data && chown pytc:pytc /data
ENV HOME=/home/pytc
USER pytc
WORKDIR /data
EXPOSE 8000
CMD ["pytc-serve"]
