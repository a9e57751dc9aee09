# syntax=docker/dockerfile:1.7
# Triton with what our model repositories need: the python backend's runtime (ONNX Runtime GPU,
# tokenizers) for the python layout, and the domain-embed core for repository tooling
# (manifest verification). TensorRT plans and ONNX models use Triton's own backends.
# Build from the repository root:
#   docker build -f containers/triton.Dockerfile -t ghcr.io/domain-embed/triton:0.1.0-25.01 .
ARG BASE_IMAGE=nvcr.io/nvidia/tritonserver:25.01-py3

FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services/ services/
COPY configs/ configs/
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="domain-embed triton" \
      org.opencontainers.image.source="https://github.com/domain-embed/domain-embed" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# DL3013: the unpinned name is our own wheel, built from this commit in the stage above.
# hadolint ignore=DL3013
RUN WHEEL="$(ls /wheels/domain_embed-*.whl)" \
 && pip install --break-system-packages "${WHEEL}" "onnxruntime-gpu==1.20.1" "tokenizers==0.21.0" \
 && rm -rf /wheels \
 && groupadd --gid 10001 app && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin app
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 10001:10001
EXPOSE 8000 8001 8002
ENTRYPOINT ["tritonserver"]
CMD ["--model-repository=/models/repo"]
