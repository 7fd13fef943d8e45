"""Structured logs: one JSON object per line on stderr.

Fields: time, level, logger, pid, message, and whatever a caller passes in `extra`
(the access log adds requestId, method, route, status, latencyMs, customerId). Nothing
here ever sees a token: the access log is built from the route template, never from
headers."""

import logging
import logging.config
from datetime import UTC, datetime
from typing import Any

import orjson

# Attributes every LogRecord has; anything else came in through `extra`.
# (uvicorn adds color_message, a copy of the message with terminal colours.)
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD:
                entry[key] = value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def dict_config(level: str) -> dict[str, Any]:
    """logging.config.dictConfig for seatres, uvicorn, rq and rq-scheduler alike (uvicorn
    applies it in each of its worker processes)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        # strings, not objects: uvicorn pickles this for its worker processes
        "formatters": {"json": {"()": "seatres.logs.JsonFormatter"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            name: {"handlers": [], "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "rq.worker", "rq_scheduler")
        },
    }


def configure(level: str) -> None:
    logging.config.dictConfig(dict_config(level))
