"""What the API accepts as input, checked once at the edge: the JSON body parser and the typed
fields and query-parameter readers every app's api.py uses.

The database refuses what these refuse, but later and as a 500: an integer above 2^63 overflows
SQLite and PostgreSQL, a NUL byte cannot be stored in PostgreSQL text or jsonb, a body nested a
thousand deep exhausts Python's recursion limit. Each is a 400 here, naming where it was.
"""

import json
import math
import re
from datetime import datetime

from django.conf import settings
from django.utils.dateparse import parse_datetime
from rest_framework import exceptions, serializers, status
from rest_framework.parsers import JSONParser

from orchestrator.errors import ValidationFailed

INT64_MAX = 2**63 - 1
ID_MAX = INT64_MAX
# Deeper than any document this API stores needs; far below Python's recursion limit.
JSON_MAX_DEPTH = 64
# ASCII digits only: Python's int() also reads "١٢" (Arabic-Indic) and str.isdigit() accepts "²".
ASCII_INTEGER = re.compile(r"[+-]?[0-9]+")


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "payload_too_large"
    default_detail = "The request body is too large."


NUMBER_RULE = "must be a finite number, and an integer within 64 bits (|n| < 2^63)"


def _parse_float(text):
    value = float(text)
    if not math.isfinite(value):  # 1e400: json reads it as inf
        raise exceptions.ValidationError({"body": [f"number {text[:40]} {NUMBER_RULE}"]})
    return value


def _refuse_constant(name):
    raise exceptions.ValidationError({"body": [f"{name} is not a JSON number"]})


def json_problems(value, *, max_depth=JSON_MAX_DEPTH, path=""):
    """The first rule a decoded JSON value breaks, as (dotted path or "body", rule), or None:
    nesting deeper than `max_depth`, a NUL character in a string or key, an integer beyond 64
    bits. Iterative, so any depth is safe to check."""
    stack = [(value, path, 1)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > max_depth:
                return where or "body", f"is nested deeper than {max_depth} levels"
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in pairs:
                if isinstance(key, str) and "\x00" in key:
                    return where or "body", "must not contain NUL characters (\\u0000)"
                stack.append((child, f"{where}.{key}" if where else str(key), depth + 1))
        elif isinstance(item, str) and "\x00" in item:
            return where or "body", "must not contain NUL characters (\\u0000)"
        elif isinstance(item, int) and not isinstance(item, bool) and abs(item) > INT64_MAX:
            return where or "body", NUMBER_RULE
    return None


class StrictJSONParser(JSONParser):
    """JSON bodies up to DATA_UPLOAD_MAX_MEMORY_SIZE (413 above), integers within 64 bits, finite
    numbers, no NUL characters, at most JSON_MAX_DEPTH levels: anything else is a 400."""

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        raw = stream.read(limit + 1) if limit is not None else stream.read()
        if limit is not None and len(raw) > limit:
            raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
        try:
            text = raw.decode((parser_context or {}).get("encoding") or settings.DEFAULT_CHARSET)
            data = json.loads(text, parse_float=_parse_float, parse_constant=_refuse_constant)
        except RecursionError:
            raise exceptions.ParseError(f"JSON parse error - nested deeper than {JSON_MAX_DEPTH} levels") from None
        except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError included
            raise exceptions.ParseError(f"JSON parse error - {exc}") from None
        problem = json_problems(data)
        if problem:
            raise exceptions.ValidationError({problem[0]: [problem[1]]})
        return data


class BoundedIntegerField(serializers.IntegerField):
    """An integer written with ASCII digits, between min_value and max_value (by default within
    64 bits, what the database stores)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("min_value", -INT64_MAX)
        kwargs.setdefault("max_value", INT64_MAX)
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        if isinstance(data, bool):
            self.fail("invalid")
        if isinstance(data, str) and not ASCII_INTEGER.fullmatch(data.strip()):
            self.fail("invalid")
        return super().to_internal_value(data)


class IdField(BoundedIntegerField):
    """A primary key in a body: a positive 64-bit integer."""

    def __init__(self, **kwargs):
        kwargs.setdefault("min_value", 1)
        super().__init__(**kwargs)


class BoundedJSONField(serializers.JSONField):
    """A JSON value of at most `max_bytes` once serialised and `max_depth` levels."""

    def __init__(self, *, max_bytes=65_536, max_depth=16, **kwargs):
        self.max_bytes = max_bytes
        self.max_depth = max_depth
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        problem = json_problems(data, max_depth=self.max_depth)
        if problem:
            where = "" if problem[0] == "body" else f"at {problem[0]}: "
            raise serializers.ValidationError(f"{where}{problem[1]}")
        value = super().to_internal_value(data)
        size = len(json.dumps(value, separators=(",", ":")).encode())
        if size > self.max_bytes:
            raise serializers.ValidationError(f"must be at most {self.max_bytes} bytes as JSON (got {size})")
        return value


def int_param(params, name, *, minimum=None, maximum=INT64_MAX, default=None):
    """An integer query parameter in ASCII digits within [minimum, maximum]; absent or empty ->
    `default`. Raises ValidationFailed naming the parameter."""
    raw = params.get(name)
    if raw in (None, ""):
        return default
    if not ASCII_INTEGER.fullmatch(raw.strip()) or len(raw.strip()) > 20:
        raise ValidationFailed(field=name, rule="must be an integer")
    value = int(raw)
    low = -INT64_MAX if minimum is None else minimum
    if value < low:
        raise ValidationFailed(field=name, rule=f"must be at least {low}")
    if value > maximum:
        raise ValidationFailed(field=name, rule=f"must be at most {maximum}")
    return value


def id_param(params, name):
    """An id query parameter (1 to 2^63-1), or None when absent."""
    return int_param(params, name, minimum=1, maximum=ID_MAX)


def datetime_param(params, name) -> datetime | None:
    """An ISO 8601 date-time query parameter, or None when absent."""
    raw = params.get(name)
    if not raw:
        return None
    try:
        value = parse_datetime(raw)
    except ValueError:  # well formed but impossible, e.g. month 13
        value = None
    if value is None:
        raise ValidationFailed(field=name, rule="must be an ISO 8601 date-time")
    return value
