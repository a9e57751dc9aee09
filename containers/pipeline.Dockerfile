# syntax=docker/dockerfile:1.7
# Pipeline and trainer: curate, synthesize, split, mine (faiss GPU), train (Lightning DDP/FSDP,
# torchrun), evaluate. NGC PyTorch base: CUDA, NCCL and a torch built for them.
# Build from the repository root:
#   docker build -f containers/pipeline.Dockerfile -t ghcr.io/domain-embed/pipeline:0.1.0-25.01 .
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:25.01-py3

FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services/ services/
COPY configs/ configs/
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="domain-embed pipeline" \
      org.opencontainers.image.source="https://github.com/domain-embed/domain-embed" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
# The NGC image sets PIP_CONSTRAINT=/etc/pip/constraint.txt, which keeps its own torch build:
# pip must not replace it with a PyPI wheel. faiss-gpu-cu12 gives mining its GPU index.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# DL3013: the unpinned name is our own wheel, built from this commit in the stage above.
# hadolint ignore=DL3013
RUN WHEEL="$(ls /wheels/domain_embed-*.whl)" \
 && pip install "${WHEEL}[curate,train,export]" "faiss-gpu-cu12==1.9.0.0" \
 && rm -rf /wheels \
 && groupadd --gid 10001 app && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin app
COPY --from=build /src/configs /opt/domain-embed/configs
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HOME=/tmp
USER 10001:10001
ENTRYPOINT ["domain-embed"]
