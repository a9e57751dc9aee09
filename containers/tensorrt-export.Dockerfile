# syntax=docker/dockerfile:1.7
# The export stage with TensorRT: ONNX export + parity, then a TensorRT fp16 plan, then the Triton
# repository with its sha256 manifest. The NGC TensorRT base carries TensorRT, trtexec and CUDA.
# Build from the repository root:
#   docker build -f containers/tensorrt-export.Dockerfile -t ghcr.io/domain-embed/tensorrt-export:0.1.0-25.01 .
ARG BASE_IMAGE=nvcr.io/nvidia/tensorrt:25.01-py3

FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services/ services/
COPY configs/ configs/
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="domain-embed tensorrt-export" \
      org.opencontainers.image.source="https://github.com/domain-embed/domain-embed" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# DL3013: the unpinned name is our own wheel, built from this commit in the stage above.
# hadolint ignore=DL3013
RUN WHEEL="$(ls /wheels/domain_embed-*.whl)" \
 && pip install "${WHEEL}[export]" \
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
CMD ["export", "--help"]
