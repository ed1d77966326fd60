//! The OpenAPI 3 document served at `GET /api/v1/openapi.json`. A test walks every path
//! and method in it against a running server, and creates a route with every documented
//! route field, so the document cannot drift from the server unnoticed.

use serde_json::{Value, json};

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
}

fn ok_json(description: &str, schema: Value) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": schema}}
    })
}

fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn list_of(name: &str) -> Value {
    json!({"type": "array", "items": reference(name)})
}

fn body(name: &str) -> Value {
    json!({
        "required": true,
        "content": {"application/json": {"schema": reference(name)}}
    })
}

fn id_param() -> Value {
    json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}])
}

fn duration() -> Value {
    json!({"type": "string", "description": "a duration such as \"5s\", \"10m\", \"24h\"", "example": "5s"})
}

fn strings() -> Value {
    json!({"type": "array", "items": {"type": "string"}})
}

fn string_map() -> Value {
    json!({"type": "object", "additionalProperties": {"type": "string"}})
}

fn object(properties: Value, required: &[&str]) -> Value {
    let mut o = json!({"type": "object", "additionalProperties": false, "properties": properties});
    if !required.is_empty() {
        o["required"] = json!(required);
    }
    o
}

/// Properties of a route: the keys of a `[[routes]]` entry in a gateway file.
pub(crate) fn route_properties() -> Value {
    json!({
        "name": {"type": "string", "description": "unique route name"},
        "hosts": {"type": "array", "items": {"type": "string"}, "description": "host names or \"*.wildcard\"; omitted: any host"},
        "path": {"type": "string", "default": "/", "description": "path prefix on a segment boundary"},
        "strip_path": {"type": "boolean", "default": false},
        "methods": strings(),
        "upstream": {"type": "string", "example": "http://127.0.0.1:8080"},
        "upstreams": strings(),
        "via": {"type": "string", "description": "reach the upstream through agents of this name"},
        "host_header": {"type": "string"},
        "tls_verify": {"type": "boolean", "default": true},
        "max_body": {"oneOf": [{"type": "string", "example": "500MiB"}, {"type": "integer", "minimum": 0}]},
        "timeouts": object(json!({"connect": duration(), "response": duration(), "idle": duration()}), &[]),
        "load_balance": {"type": "string", "enum": ["round_robin", "least_requests"]},
        "health_check": object(json!({"path": {"type": "string"}, "interval": duration(), "timeout": duration()}), &[]),
        "enabled": {"type": "boolean", "default": true},
        "jwt": object(json!({
            "jwks_uri": {"type": "string"},
            "secret_file": {"type": "string"},
            "issuer": {"type": "string"},
            "audiences": strings(),
            "algorithms": strings(),
            "roles_claim": {"type": "string"},
            "require_roles": strings(),
            "scopes_claim": {"type": "string"},
            "require_scopes": strings(),
            "forward_claims": string_map()
        }), &[]),
        "rate_limit": object(json!({
            "key": {"type": "string", "description": "ip, api_key, claim:NAME or header:NAME"},
            "requests": {"type": "integer", "minimum": 1},
            "per": duration(),
            "burst": {"type": "integer", "minimum": 0},
            "store": {"type": "string", "example": "redis://127.0.0.1:6379"},
            "on_store_error": {"type": "string", "enum": ["allow", "deny"]}
        }), &["requests", "per"]),
        "api_keys": object(json!({
            "header": {"type": "string", "default": "x-api-key"},
            "keys_file": {"type": "string"}
        }), &["keys_file"]),
        "cors": object(json!({
            "allow_origins": strings(),
            "allow_methods": strings(),
            "allow_headers": strings(),
            "expose_headers": strings(),
            "allow_credentials": {"type": "boolean"},
            "max_age": duration()
        }), &[]),
        "ip": object(json!({"allow": strings(), "deny": strings()}), &[]),
        "headers": object(json!({
            "request_set": string_map(),
            "request_remove": strings(),
            "response_set": string_map(),
            "response_remove": strings()
        }), &[])
    })
}

fn schemas() -> Value {
    let mut route = object(route_properties(), &["name"]);
    route["description"] = json!(
        "The fields of a [[routes]] entry in a gateway file, validated with the same rules as `kakuremichi check`. Set `upstream` or `upstreams`."
    );
    let mut route_out = route.clone();
    route_out["properties"]["id"] = json!({"type": "string", "readOnly": true});
    route_out["required"] = json!(["id", "name"]);
    let status = json!({"type": "string", "enum": ["healthy", "degraded", "down"]});
    let nullable_time = json!({"type": ["string", "null"], "format": "date-time"});
    json!({
        "Error": {
            "type": "object",
            "required": ["error", "message"],
            "properties": {
                "error": {"type": "string", "example": "invalid_route"},
                "message": {"type": "string"},
                "field": {"type": "string", "description": "the field the problem is in, when known"}
            }
        },
        "NewAgent": object(json!({"name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"}}), &["name"]),
        "NewGateway": object(json!({
            "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"},
            "address": {"type": "string", "description": "host:port agents dial for the tunnel", "example": "gw1.example.com:7844"}
        }), &["name", "address"]),
        "Created": {
            "type": "object",
            "required": ["id", "name", "token", "created_at", "config", "command"],
            "properties": {
                "id": {"type": "string"},
                "name": {"type": "string"},
                "address": {"type": "string"},
                "token": {"type": "string", "description": "agt_... or gtw_...; shown once, only its hash is stored"},
                "created_at": {"type": "string", "format": "date-time"},
                "config": {"type": "string", "description": "a config file for the new agent or gateway"},
                "command": {"type": "string"}
            }
        },
        "Agent": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "name": {"type": "string"},
                "status": status,
                "status_reason": {"type": ["string", "null"]},
                "connected_gateways": strings(),
                "last_seen": nullable_time,
                "config_version": {"type": ["integer", "null"]},
                "created_at": {"type": "string", "format": "date-time"}
            }
        },
        "Gateway": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "name": {"type": "string"},
                "address": {"type": "string"},
                "status": status,
                "status_reason": {"type": ["string", "null"]},
                "pin": {"type": ["string", "null"]},
                "certificates": {"type": "array", "items": reference("Certificate")},
                "requests_per_second": {"type": ["number", "null"]},
                "last_seen": nullable_time,
                "config_version": {"type": ["integer", "null"]},
                "created_at": {"type": "string", "format": "date-time"}
            }
        },
        "Certificate": {
            "type": "object",
            "properties": {
                "hosts": strings(),
                "state": {"type": "string", "enum": ["valid", "pending", "renewing", "expired", "error"]},
                "not_after": {"type": "string", "format": "date-time"},
                "error": {"type": "string"}
            }
        },
        "RouteInput": route,
        "Route": route_out,
        "Info": {
            "type": "object",
            "properties": {
                "version": {"type": "string"},
                "database": {"type": "string", "enum": ["sqlite", "postgres"]},
                "public_url": {"type": "string"},
                "config_version": {"type": "integer"},
                "epoch": {"type": "string"}
            }
        },
        "Snapshot": {
            "type": "object",
            "description": "Push message {\"type\": \"snapshot\", ...} on /api/v1/connect",
            "properties": {
                "type": {"type": "string", "enum": ["snapshot"]},
                "version": {"type": "integer"},
                "epoch": {"type": "string"},
                "role": {"type": "string", "enum": ["gateway", "agent"]},
                "name": {"type": "string"},
                "routes": list_of("Route"),
                "agents": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}, "token_sha256": {"type": "string"}}}},
                "gateways": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}, "address": {"type": "string"}, "pin": {"type": "string"}}}}
            }
        }
    })
}

fn peer_paths(plural: &str, singular: &str, schema: &str, new_schema: &str) -> (Value, Value) {
    let collection = json!({
        "get": {
            "summary": format!("List {plural} with their status"),
            "operationId": format!("list_{plural}"),
            "responses": {"200": ok_json(&format!("every {singular}"), list_of(schema)), "401": error_response("missing or wrong admin token")}
        },
        "post": {
            "summary": format!("Create {singular}; the token in the answer is shown once"),
            "operationId": format!("create_{singular}"),
            "requestBody": body(new_schema),
            "responses": {
                "201": ok_json("created", reference("Created")),
                "400": error_response("invalid JSON or field"),
                "401": error_response("missing or wrong admin token"),
                "409": error_response("the name is taken"),
                "413": error_response("body too large")
            }
        }
    });
    let item = json!({
        "parameters": id_param(),
        "get": {
            "summary": format!("One {singular} with its status"),
            "operationId": format!("get_{singular}"),
            "responses": {"200": ok_json(singular, reference(schema)), "401": error_response("missing or wrong admin token"), "404": error_response("no such id")}
        },
        "delete": {
            "summary": format!("Delete {singular}: its token stops working and its push socket closes"),
            "operationId": format!("delete_{singular}"),
            "responses": {"204": {"description": "deleted"}, "401": error_response("missing or wrong admin token"), "404": error_response("no such id")}
        }
    });
    (collection, item)
}

/// The whole document.
pub(crate) fn document() -> Value {
    let (agents, agent) = peer_paths("agents", "agent", "Agent", "NewAgent");
    let (gateways, gateway) = peer_paths("gateways", "gateway", "Gateway", "NewGateway");
    let route_write_responses = |ok: &str| {
        json!({
            ok: ok_json("the stored route", reference("Route")),
            "400": error_response("invalid JSON, unknown field, invalid value, or `via` naming no agent"),
            "401": error_response("missing or wrong admin token"),
            "404": error_response("no such id"),
            "409": error_response("duplicate name, or same hosts and path as another route"),
            "413": error_response("body too large")
        })
    };
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "kakuremichi control API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Agents, gateways and routes of a kakuremichi deployment. Authenticate with Authorization: Bearer <admin token> (from admin_token_file). Errors are {\"error\", \"message\", \"field\"}."
        },
        "components": {
            "securitySchemes": {
                "admin": {"type": "http", "scheme": "bearer", "description": "the admin token"},
                "peer": {"type": "http", "scheme": "bearer", "description": "a gateway (gtw_...) or agent (agt_...) token"}
            },
            "schemas": schemas()
        },
        "security": [{"admin": []}],
        "paths": {
            "/api/v1/openapi.json": {
                "get": {"summary": "This document", "operationId": "openapi", "security": [], "responses": {"200": {"description": "OpenAPI 3 document"}}}
            },
            "/api/v1/info": {
                "get": {"summary": "Server version, database kind, public URL and current config version", "operationId": "info", "responses": {"200": ok_json("info", reference("Info")), "401": error_response("missing or wrong admin token")}}
            },
            "/api/v1/agents": agents,
            "/api/v1/agents/{id}": agent,
            "/api/v1/gateways": gateways,
            "/api/v1/gateways/{id}": gateway,
            "/api/v1/routes": {
                "get": {
                    "summary": "List routes",
                    "operationId": "list_routes",
                    "responses": {"200": ok_json("every route", list_of("Route")), "401": error_response("missing or wrong admin token")}
                },
                "post": {
                    "summary": "Create a route; every gateway receives it by push",
                    "operationId": "create_route",
                    "requestBody": body("RouteInput"),
                    "responses": route_write_responses("201")
                }
            },
            "/api/v1/routes/{id}": {
                "parameters": id_param(),
                "get": {
                    "summary": "One route",
                    "operationId": "get_route",
                    "responses": {"200": ok_json("the route", reference("Route")), "401": error_response("missing or wrong admin token"), "404": error_response("no such id")}
                },
                "put": {
                    "summary": "Replace a route (an `id` in the body must match the URL)",
                    "operationId": "replace_route",
                    "requestBody": body("RouteInput"),
                    "responses": route_write_responses("200")
                },
                "delete": {
                    "summary": "Delete a route",
                    "operationId": "delete_route",
                    "responses": {"204": {"description": "deleted"}, "401": error_response("missing or wrong admin token"), "404": error_response("no such id")}
                }
            },
            "/api/v1/connect": {
                "get": {
                    "summary": "Push WebSocket for gateways and agents",
                    "description": "Upgrade to a WebSocket with a gateway or agent token. The server sends {\"type\":\"snapshot\",...} on connect and after every change, {\"type\":\"current\"} when ?since=VERSION&epoch=EPOCH is still current, and {\"type\":\"heartbeat\"} every 5 s; the peer sends heartbeats and {\"type\":\"status\",...}. A deleted peer is closed with code 4401.",
                    "operationId": "connect",
                    "security": [{"peer": []}],
                    "parameters": [
                        {"name": "since", "in": "query", "required": false, "schema": {"type": "integer"}, "description": "version of the last snapshot applied"},
                        {"name": "epoch", "in": "query", "required": false, "schema": {"type": "string"}, "description": "epoch of that snapshot"}
                    ],
                    "responses": {
                        "101": {"description": "switching to the push WebSocket", "content": {"application/json": {"schema": reference("Snapshot")}}},
                        "401": error_response("missing, unknown or deleted token"),
                        "426": error_response("not a WebSocket upgrade")
                    }
                }
            }
        }
    })
}
