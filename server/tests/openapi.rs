//! `GET /v1/openapi.json`: the OpenAPI 3.1 description of the HTTP API,
//! generated from the route definitions. Checked three ways: it is a valid
//! OpenAPI 3.1 document (openapi-spec-validator, from PyPI, pinned in
//! server/tests/tools/requirements.txt), every operation it lists is a route
//! the server answers (not the 404 of unknown routes, not 405), and the
//! answers of a few routes have the shape it says.

mod support;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::process::Command;

use reqwest::Method;
use serde_json::Value;
use support::{TestServer, token};

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

async fn document(server: &TestServer) -> Value {
    let response = server.http.get(server.url("/v1/openapi.json")).send().await.expect("GET");
    assert_eq!(response.status(), 200, "the document is public");
    assert_eq!(response.headers()["content-type"], "application/json");
    response.json().await.expect("JSON")
}

/// Every (method, path) the document lists.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_some() {
                out.insert((method.to_owned(), path.clone()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_valid_openapi_3_1() {
    let server = TestServer::start().await;
    let doc = document(&server).await;
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")), "{}", doc["openapi"]);
    assert_eq!(doc["info"]["title"], "chat-server HTTP API");
    let mut file = tempfile::NamedTempFile::new().expect("a file");
    file.write_all(doc.to_string().as_bytes()).expect("written");
    let check = "import json, sys\n\
                 from openapi_spec_validator import validate\n\
                 validate(json.load(open(sys.argv[1])))\n\
                 print('valid')";
    let out = Command::new("python3").args(["-c", check]).arg(file.path()).output();
    match out {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            if stderr.contains("No module named 'openapi_spec_validator'") && !in_ci() {
                eprintln!(
                    "SKIPPED: the_document_is_valid_openapi_3_1: no openapi-spec-validator \
                     (pip install -r server/tests/tools/requirements.txt)"
                );
                return;
            }
            panic!(
                "openapi-spec-validator refused the document:\n{stderr}\n{}",
                serde_json::to_string_pretty(&doc).unwrap_or_default()
            );
        }
        Err(err) if !in_ci() => eprintln!("SKIPPED: the_document_is_valid_openapi_3_1: no python3 ({err})"),
        Err(err) => panic!("python3 is needed (CI=true): {err}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_described_is_a_route_and_the_routes_are_described() {
    let server = TestServer::start_with(|c| c.dev_login = true).await;
    let doc = document(&server).await;
    let ops = operations(&doc);
    // The routes of the API, as the contract names them: each must be there.
    for (method, path) in [
        ("get", "/health"),
        ("get", "/metrics"),
        ("get", "/v1/openapi.json"),
        ("get", "/v1/ws"),
        ("get", "/socket.io/"),
        ("get", "/v1/support/availability"),
        ("get", "/v1/support/queue"),
        ("get", "/v1/users/online"),
        ("get", "/v1/rooms/{id}/messages"),
        ("get", "/v1/search/messages"),
        ("post", "/v1/visitor-sessions"),
        ("post", "/v1/attachments"),
        ("get", "/v1/attachments/{id}"),
        ("get", "/v1/attachments/{id}/thumbnail"),
        ("get", "/v1/admin/users"),
        ("post", "/v1/admin/users"),
        ("get", "/v1/admin/users/{id}"),
        ("patch", "/v1/admin/users/{id}"),
        ("delete", "/v1/admin/users/{id}"),
        ("post", "/v1/admin/users/{id}/deactivate"),
        ("post", "/v1/admin/users/{id}/reactivate"),
        ("post", "/v1/admin/users/{id}/revoke-tokens"),
        ("post", "/v1/admin/users/{id}/tokens"),
        ("get", "/v1/dev-login"),
        ("post", "/v1/dev-login"),
        ("get", "/v1/admin/webhooks"),
        ("post", "/v1/admin/webhooks"),
        ("delete", "/v1/admin/webhooks/{id}"),
        ("get", "/v1/admin/webhooks/{id}/deliveries"),
        ("post", "/v1/admin/webhooks/{id}/deliveries/{delivery}/retry"),
    ] {
        assert!(ops.contains(&(method.to_owned(), path.to_owned())), "{method} {path} is not described");
    }
    // And everything described is served: no 404 of an unknown route, no 405.
    for (method, path) in &ops {
        let concrete = path
            .replace("{id}", "00000000-0000-7000-8000-000000000000")
            .replace("{bridge}", "discord")
            .replace("{delivery}", "1");
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("a method");
        let response = server.http.request(method.clone(), server.url(&concrete)).send().await.expect("request");
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        assert_ne!(status, 405, "{method} {concrete}: the document lists a method the route does not take");
        assert!(!(status == 404 && body.contains("no such route")), "{method} {concrete}: described but not routed");
    }
    // Every operation says who may call it: public ones say nothing, the
    // others name the bearer token or the API key.
    for (method, path) in &ops {
        let op = &doc["paths"][path][method];
        if path.starts_with("/v1/admin/") {
            assert_eq!(op["security"], serde_json::json!([{"api_key": []}]), "{method} {path}");
        }
        assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()), "{method} {path} has no responses");
    }
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!((&schemes["api_key"]["in"], &schemes["api_key"]["name"]), (&"header".into(), &"x-api-key".into()));
    // Dev login is described only where it is routed.
    let plain = TestServer::start().await;
    assert!(!operations(&document(&plain).await).iter().any(|(_, p)| p == "/v1/dev-login"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_have_the_described_shape() {
    let server = TestServer::start().await;
    let doc = document(&server).await;
    let schemas = &doc["components"]["schemas"];
    // The error body, as every error route refers to it.
    let error = &schemas["ErrorBody"];
    assert_eq!(error["required"], serde_json::json!(["error"]));
    let (status, body) = server.get("/v1/users/online", None).await;
    assert_eq!(status, 401);
    assert!(body["error"]["code"].is_string() && body["error"]["message"].is_string(), "{body}");
    // A Message as the domain type serializes it: every field the schema
    // says is required is in a real one.
    let mut ada = server.connect("ada").await;
    let room = support::group_with(&mut ada, "private", &[]).await;
    support::send_message(&mut ada, &room, "m1", "hello").await;
    let (status, page) = server.get(&format!("/v1/rooms/{room}/messages"), Some(&token("ada"))).await;
    assert_eq!(status, 200, "{page}");
    let message = &page["messages"][0];
    for field in schemas["Message"]["required"].as_array().expect("required fields") {
        let field = field.as_str().expect("a name");
        assert!(message.get(field).is_some(), "Message.{field} is required but missing: {message}");
    }
    for field in message.as_object().expect("an object").keys() {
        assert!(schemas["Message"]["properties"].get(field).is_some(), "Message.{field} is not described");
    }
    assert_eq!(schemas["Timestamp"]["format"], "date-time");
    assert_eq!(schemas["RoomId"]["format"], "uuid");
}
