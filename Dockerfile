# The seatres image. One image, three roles (docker-compose.yml): `seatres serve` (the
# default), `seatres worker` and `seatres scheduler`. Settings come from SEATRES_*
# variables: set SEATRES_REDIS_URL and SEATRES_JWT_SECRET (without a Redis URL, `serve`
# would start an embedded Redis inside the container: for a quick try only).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY seatres ./seatres
RUN pip install . \
    && rm -rf /src/build \
    && useradd --create-home --uid 10001 seatres \
    && mkdir -p /var/lib/seatres \
    && chown seatres /var/lib/seatres

# Runs as a user that can write only its data folder (SEATRES_DATA_DIR) and /tmp.
USER seatres
WORKDIR /var/lib/seatres
ENV SEATRES_HOST=0.0.0.0 \
    SEATRES_PORT=8000 \
    SEATRES_DATA_DIR=/var/lib/seatres
EXPOSE 8000
CMD ["seatres", "serve"]
