"""The OpenAPI document's shared parts: the error body every 4xx/5xx answers with, added to every
operation by a drf-spectacular postprocessing hook, and the page shapes of the list endpoints."""

from rest_framework import serializers

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "details"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "details": {"type": "object", "additionalProperties": True},
            },
        }
    },
}

ERROR_RESPONSES = {
    "400": "Bad input: details name each field and the rule it broke",
    "401": "Not signed in (Authorization: Token <key>)",
    "403": "Signed in, but not allowed (viewers only read)",
    "404": "No such object",
    "409": "Refused by the object's state (a transition, a stale version, a limit)",
    "413": "Request body too large",
    "415": "Request body is not JSON",
    "429": "Throttled: retry after the Retry-After header's seconds",
    "500": "Internal error",
}

READS = ("400", "401", "403", "404", "429", "500")


def add_error_responses(result, generator, request, public):
    """Postprocessing hook: declare the error body and add it, per status, to every operation."""
    components = result.setdefault("components", {}).setdefault("schemas", {})
    components["Error"] = ERROR_SCHEMA
    reference = {"$ref": "#/components/schemas/Error"}
    for path_item in result.get("paths", {}).values():
        for method, operation in path_item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            responses = operation.setdefault("responses", {})
            statuses = READS if method == "get" else tuple(ERROR_RESPONSES)
            for code in statuses:
                responses.setdefault(
                    code, {"description": ERROR_RESPONSES[code], "content": {"application/json": {"schema": reference}}}
                )
    return result


def page_of(name, fields):
    """A list endpoint's body as one object (drf-spectacular would otherwise declare a `list`
    action's response as an array of it)."""
    from drf_spectacular.utils import extend_schema_serializer, inline_serializer

    page = inline_serializer(name, fields)
    extend_schema_serializer(many=False)(type(page))
    return page


def page_number_page(name, item_serializer):
    """The body of a PageNumberPagination list: count, next, previous, results."""
    return page_of(
        name,
        {
            "count": serializers.IntegerField(),
            "next": serializers.URLField(allow_null=True),
            "previous": serializers.URLField(allow_null=True),
            "results": item_serializer(many=True),
        },
    )
