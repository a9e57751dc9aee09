# syntax=docker/dockerfile:1.7
# The NIM-compatible gateway: FastAPI + tritonclient, the `serve` extra only (no torch).
# Build from the repository root:
#   docker build -f containers/gateway.Dockerfile -t ghcr.io/domain-embed/gateway:0.1.0 .
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services/ services/
COPY configs/ configs/
# A venv that the runtime stage copies whole: no compilers or pip caches reach the final image.
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install ".[serve]"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="domain-embed gateway" \
      org.opencontainers.image.source="https://github.com/domain-embed/domain-embed" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 app && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin app
COPY --from=build /opt/venv /opt/venv
COPY --from=build /src/configs /opt/domain-embed/configs
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    DOMAIN_EMBED_SERVE_HOST=0.0.0.0 \
    DOMAIN_EMBED_SERVE_PORT=8080
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["python", "-m", "domain_embed.serve.gateway"]
