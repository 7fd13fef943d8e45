FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY seatres ./seatres
RUN pip install --no-cache-dir . && useradd --create-home seatres
USER seatres
ENV SEATRES_HOST=0.0.0.0 SEATRES_PORT=8000
EXPOSE 8000
CMD ["seatres", "serve"]
