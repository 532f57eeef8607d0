# The worker image: the service and its runtime dependencies from uv.lock, nothing else.
FROM python:3.11-slim AS build
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
WORKDIR /app
# Dependencies first, so that a code change does not reinstall them.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY service ./service
COPY schemas ./schemas
COPY devstack ./devstack
RUN uv sync --frozen --no-dev --no-editable

FROM python:3.11-slim
COPY --from=build /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH PYTHONUNBUFFERED=1 LOG_FORMAT=json
USER 65534:65534
EXPOSE 8080
ENTRYPOINT ["customer-service"]
CMD ["worker"]
