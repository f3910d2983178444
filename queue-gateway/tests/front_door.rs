//! The front door under attack: a corpus of raw requests (smuggling, framing tricks, path
//! tricks, forged headers, odd targets and methods), each sent over a raw socket to two
//! gateways, one with its own HTTP/1.1 lane and one with everything through hyper, each in
//! front of an upstream that logs the exact bytes it receives and reads them with a strict
//! reference parser ([`common::raw`]). For every case and both gateways:
//! - nothing reaches a protected prefix (in any backend's reading of the path: decoded,
//!   case-folded, `;` parameters dropped, dot segments resolved) without an admission;
//! - every message the upstream gets is well framed, has no forged gateway header and no
//!   underscored header name;
//! - the client gets exactly the responses to its own requests, in order;
//! - the upstream sees the same requests from both gateways, and the client the same statuses.
//!
//! Then 100 attacking connections and 50 honest ones at once: every honest client's answers
//! are its own.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::raw::{Answers, Logged, LoggingUpstream, answers, exchange, tag_of};
use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Prefixes the room protects.
const PROTECTED: [&str; 2] = ["/book/", "/api/v1/reservations"];

/// A gateway (`fast_lane` on or off) in front of a logging upstream, with a paused room
/// protecting [`PROTECTED`]: nobody is admitted, so nothing may reach those paths.
async fn gateway(fast_lane: bool) -> (queue_gateway::Running, LoggingUpstream) {
    let up = LoggingUpstream::start().await;
    let mut cfg = config(up.addr, None);
    cfg.limits.fast_lane = fast_lane;
    cfg.limits.header_read_timeout_ms = 1_000;
    cfg.limits.keep_alive_idle_ms = 1_500;
    cfg.limits.request_timeout_ms = 3_000;
    cfg.limits.upstream_timeout_ms = 3_000;
    cfg.limits.max_body_bytes = 64 * 1024;
    let gw = queue_gateway::spawn(cfg).await.unwrap();
    let mut http = Http::new(gw.addr);
    put_room(&mut http, "hot", json!({"protect": PROTECTED, "target": "/book/", "paused": true})).await;
    (gw, up)
}

// ---- the corpus -------------------------------------------------------------------------

/// A request to `target` with `headers` (lines without CRLF) and `body`, CRLF line ends.
fn req(method: &str, target: &str, headers: &[&str], body: &str) -> String {
    let mut s = format!("{method} {target} HTTP/1.1\r\nHost: gw.test\r\n");
    for h in headers {
        s.push_str(h);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.push_str(body);
    s
}

fn get(target: &str) -> String {
    req("GET", target, &[], "")
}

/// A request hidden where a confused reader would find a second one.
fn inner(path: &str) -> String {
    get(&format!("{path}?t={{TAG}}&smuggled=1"))
}

fn chunk(data: &str) -> String {
    format!("{:x}\r\n{data}\r\n", data.len())
}

/// The corpus: (name, bytes with `{TAG}` for the case's tag, five characters like the tags
/// themselves, so lengths written into a case stay true). Every target carries `t={TAG}` so
/// the upstream's log can be attributed to its case, smuggled requests included.
fn corpus() -> Vec<(String, String)> {
    let mut c: Vec<(String, String)> = Vec::new();
    let mut add = |name: &str, bytes: String| c.push((name.to_owned(), bytes));
    let pub_ = "/pub/a?t={TAG}";

    // Baselines.
    add("get", get(pub_));
    add("get protected", get("/book/1?t={TAG}"));
    add("post", req("POST", pub_, &["Content-Length: 5"], "hello"));
    add("pipelined 3", [get(pub_), get("/pub/b?t={TAG}"), get("/pub/c?t={TAG}")].concat());
    add("pipelined protected middle", [get(pub_), get("/book/1?t={TAG}"), get("/pub/c?t={TAG}")].concat());
    add("head", req("HEAD", pub_, &[], ""));
    add(
        "close then more",
        [req("GET", pub_, &["Connection: close"], ""), get("/pub/after?t={TAG}")].concat(),
    );
    add("post protected", req("POST", "/api/v1/reservations?t={TAG}", &["Content-Length: 2"], "{}"));

    // CL.TE and TE.CL with every spelling of Transfer-Encoding.
    let smuggled = inner("/book/smuggled");
    let te_values = [
        "chunked",
        " chunked",
        "chunked ",
        "Chunked",
        "CHUNKED",
        "xchunked",
        "chunked, identity",
        "identity, chunked",
        "gzip, chunked",
        "chunk",
        "\"chunked\"",
        "chunked;q=1",
        "identity",
        "\tchunked",
        "chunked\t",
        "x-chunked",
    ];
    for te in te_values {
        let body = format!("0\r\n\r\n{smuggled}");
        let cl = format!("Content-Length: {}", body.len());
        let te_line = format!("Transfer-Encoding: {te}");
        add(&format!("CL.TE {te:?}"), req("POST", "/pub/clte?t={TAG}", &[&cl, &te_line], &body));
        let size_line = format!("{:x}\r\n", smuggled.len());
        let body = format!("{size_line}{smuggled}\r\n0\r\n\r\n");
        let cl = format!("Content-Length: {}", size_line.len());
        add(&format!("TE.CL {te:?}"), req("POST", "/pub/tecl?t={TAG}", &[&te_line, &cl], &body));
    }
    let body = format!("0\r\n\r\n{smuggled}");
    let cl = format!("Content-Length: {}", body.len());
    for (name, lines) in [
        ("TE twice chunked+identity", vec!["Transfer-Encoding: chunked", "Transfer-Encoding: identity"]),
        ("TE twice identity+chunked", vec!["Transfer-Encoding: identity", "Transfer-Encoding: chunked"]),
        ("TE obs-fold", vec!["Transfer-Encoding:\r\n chunked"]),
        ("TE folded into another", vec!["X-Fold: a\r\n Transfer-Encoding: chunked"]),
        ("TE space before colon", vec!["Transfer-Encoding : chunked"]),
        ("TE tab before colon", vec!["Transfer-Encoding\t: chunked"]),
        ("TE underscore", vec!["Transfer_Encoding: chunked"]),
        ("TE after bare LF", vec!["X-A: a\nTransfer-Encoding: chunked"]),
        ("TE vertical tab", vec!["Transfer-Encoding:\x0bchunked"]),
        ("TE NUL", vec!["Transfer-Encoding: chunked\0"]),
    ] {
        let mut lines: Vec<&str> = lines;
        lines.push(&cl);
        add(name, req("POST", "/pub/te?t={TAG}", &lines, &body));
    }

    // Content-Length spellings, each with a hidden request after the length it may mean.
    let hidden = format!("hello{smuggled}");
    for cl in [
        "+5",
        "-5",
        "5 ",
        " 5",
        "5,5",
        "5, 6",
        "0x5",
        "05",
        "5.0",
        "99999999999999999999",
        "5a",
        "",
        "1e1",
        "５",
    ] {
        let line = format!("Content-Length: {cl}");
        add(&format!("CL {cl:?}"), req("POST", "/pub/cl?t={TAG}", &[&line], &hidden));
    }
    let full = format!("Content-Length: {}", hidden.len());
    for (name, lines) in [
        ("CL twice same", vec!["Content-Length: 5", "Content-Length: 5"]),
        ("CL twice short first", vec!["Content-Length: 5", full.as_str()]),
        ("CL twice long first", vec![full.as_str(), "Content-Length: 5"]),
        ("CL underscore", vec!["Content_Length: 5", full.as_str()]),
        ("CL space before colon", vec!["Content-Length : 5"]),
        ("CL tab before colon", vec!["Content-Length\t: 5"]),
    ] {
        add(name, req("POST", "/pub/cl?t={TAG}", &lines, &hidden));
    }
    add("GET with CL body", req("GET", pub_, &["Content-Length: 5"], &hidden));
    add("GET with CL hiding all", req("GET", pub_, &[&full], &hidden));

    // Connection naming end-to-end headers.
    let body = format!("x{smuggled}");
    let cl = format!("Content-Length: {}", body.len());
    for named in ["content-length", "Content-Length", "close, content-length", "keep-alive, Content-Length"] {
        let line = format!("Connection: {named}");
        add(&format!("Connection: {named}"), req("POST", "/pub/conn?t={TAG}", &[&line, &cl], &body));
    }
    let chunked_body = format!("{}0\r\n\r\n", chunk(&smuggled));
    add(
        "Connection: transfer-encoding",
        req(
            "POST",
            "/pub/conn?t={TAG}",
            &["Connection: transfer-encoding", "Transfer-Encoding: chunked"],
            &chunked_body,
        ),
    );
    add("Connection: host", req("GET", pub_, &["Connection: host"], ""));
    add(
        "Connection: x-admission-token",
        req("GET", "/book/1?t={TAG}", &["Connection: x-admission-token", "X-Admission-Token: forged"], ""),
    );
    add(
        "Connection: cookie",
        req("GET", "/book/1?t={TAG}", &["Connection: cookie", "Cookie: wr_hot=x.y"], ""),
    );
    add(
        "Connection: x-forwarded-for",
        req("GET", pub_, &["Connection: x-forwarded-for", "X-Forwarded-For: 1.2.3.4"], ""),
    );
    add(
        "Connection: x-private",
        req("GET", pub_, &["Connection: keep-alive, x-private", "X-Private: 1"], ""),
    );
    add("Connection: upgrade alone", req("GET", pub_, &["Connection: upgrade"], ""));
    add("Connection: te", req("GET", pub_, &["Connection: te", "TE: trailers"], ""));

    // Chunk sizes, extensions, ends.
    let te = "Transfer-Encoding: chunked";
    for (name, body) in [
        ("chunk ext", "5;a=b\r\nhello\r\n0\r\n\r\n".to_owned()),
        ("chunk long ext", format!("5;{}\r\nhello\r\n0\r\n\r\n", "e".repeat(5000))),
        ("chunk size overflow", "fffffffffffffffff1\r\nhello\r\n0\r\n\r\n".to_owned()),
        ("chunk size 0x", "0x5\r\nhello\r\n0\r\n\r\n".to_owned()),
        ("chunk size negative", "-5\r\nhello\r\n0\r\n\r\n".to_owned()),
        ("chunk size space", "5 \r\nhello\r\n0\r\n\r\n".to_owned()),
        ("chunk size leading zeros", "0005\r\nhello\r\n0\r\n\r\n".to_owned()),
        ("chunk size upper hex", "A\r\n0123456789\r\n0\r\n\r\n".to_owned()),
        ("chunk bare LF size", "5\nhello\r\n0\r\n\r\n".to_owned()),
        ("chunk missing CRLF", "5\r\nhello0\r\n\r\n".to_owned()),
        ("chunk data longer", "3\r\nhello\r\n0\r\n\r\n".to_owned()),
        ("chunk last ext", "5\r\nhello\r\n0;x=y\r\n\r\n".to_owned()),
        ("chunk trailer TE", "5\r\nhello\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n".to_owned()),
        ("chunk trailer token", "5\r\nhello\r\n0\r\nX-Admission-Token: forged\r\n\r\n".to_owned()),
        ("chunk then request", format!("5\r\nhello\r\n0\r\n\r\n{smuggled}")),
        ("chunk smuggled in data", format!("{}0\r\n\r\n", chunk(&smuggled))),
        ("chunk never ends", "5\r\nhello\r\n".to_owned()),
        ("chunk size only", "5\r\n".to_owned()),
    ] {
        add(name, req("POST", "/pub/chunk?t={TAG}", &[te], &body));
    }

    // Line ends.
    add("bare LF", "GET /pub/a?t={TAG} HTTP/1.1\nHost: gw.test\n\n".to_owned());
    add("bare CR", "GET /pub/a?t={TAG} HTTP/1.1\rHost: gw.test\r\r".to_owned());
    add("CRLF head LF end", "GET /pub/a?t={TAG} HTTP/1.1\r\nHost: gw.test\n\n".to_owned());
    add("leading CRLF", format!("\r\n{}", get(pub_)));
    add("CR CR LF", "GET /pub/a?t={TAG} HTTP/1.1\r\r\nHost: gw.test\r\n\r\n".to_owned());
    add("trailing space version", "GET /pub/a?t={TAG} HTTP/1.1 \r\nHost: gw.test\r\n\r\n".to_owned());
    add("LF inside value", "GET /pub/a?t={TAG} HTTP/1.1\r\nX-A: a\nb\r\nHost: gw.test\r\n\r\n".to_owned());
    add("CR inside value", "GET /pub/a?t={TAG} HTTP/1.1\r\nX-A: a\rb\r\nHost: gw.test\r\n\r\n".to_owned());

    // Folded header lines.
    add("obs-fold", req("GET", pub_, &["X-A: a\r\n b"], ""));
    add("obs-fold tab", req("GET", pub_, &["X-A: a\r\n\tb"], ""));
    add("obs-fold host", req("GET", pub_, &["X-H: a\r\n Host: evil"], ""));
    add("obs-fold cookie", req("GET", "/book/1?t={TAG}", &["Cookie: a=b\r\n wr_hot=x.y"], ""));

    // NUL and control bytes.
    add("NUL in value", req("GET", pub_, &["X-A: a\0b"], ""));
    add("NUL in path", "GET /pub/a\0?t={TAG} HTTP/1.1\r\nHost: gw.test\r\n\r\n".to_owned());
    add("NUL in method", "G\0ET /pub/a?t={TAG} HTTP/1.1\r\nHost: gw.test\r\n\r\n".to_owned());
    add("DEL in name", req("GET", pub_, &["X-\x7fA: 1"], ""));
    add("SOH in value", req("GET", pub_, &["X-A: \x01"], ""));
    add("high bytes in value", req("GET", pub_, &["X-A: caf\u{e9}"], ""));

    // Long heads.
    add("huge header", req("GET", pub_, &[&format!("X-Big: {}", "a".repeat(20_000))], ""));
    add("long target", get(&format!("/pub/{}?t={{TAG}}", "p".repeat(12_000))));
    let many: Vec<String> = (0..150).map(|i| format!("X-H{i}: {i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    add("150 headers", req("GET", pub_, &many, ""));
    add("long method", req(&"M".repeat(1000), pub_, &[], ""));
    add("long cookie", req("GET", pub_, &[&format!("Cookie: a={}", "c".repeat(15_000))], ""));

    // Pipelining.
    add("pipelined 5", (0..5).map(|i| get(&format!("/pub/{i}?t={{TAG}}"))).collect());
    add(
        "pipelined with body",
        [get(pub_), req("POST", "/pub/p?t={TAG}", &["Content-Length: 3"], "abc"), get("/pub/z?t={TAG}")]
            .concat(),
    );
    add(
        "pipelined bad middle",
        [
            get(pub_),
            req("POST", "/pub/p?t={TAG}", &["Content-Length: 3", "Content-Length: 40"], &hidden),
            get("/pub/z?t={TAG}"),
        ]
        .concat(),
    );
    add("pipelined incomplete", [get(pub_), "GET /pub/b?t={TAG} HTTP/1.1\r\nHost: gw".to_owned()].concat());
    add("pipelined 20", (0..20).map(|i| get(&format!("/pub/{i}?t={{TAG}}"))).collect());
    add("pipelined protected last", [get(pub_), get("/api/v1/reservations?t={TAG}")].concat());

    // Expect and Upgrade.
    add(
        "expect 100 with body",
        req("POST", "/pub/e?t={TAG}", &["Expect: 100-continue", "Content-Length: 5"], "hello"),
    );
    add(
        "expect 100 no body",
        req("POST", "/pub/e?t={TAG}", &["Expect: 100-continue", "Content-Length: 5"], ""),
    );
    add("expect bogus", req("POST", "/pub/e?t={TAG}", &["Expect: bogus", "Content-Length: 5"], "hello"));
    add(
        "upgrade h2c",
        req(
            "GET",
            pub_,
            &[
                "Connection: Upgrade, HTTP2-Settings",
                "Upgrade: h2c",
                "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
            ],
            "",
        ),
    );
    add(
        "upgrade h2c protected",
        req(
            "GET",
            "/book/1?t={TAG}",
            &[
                "Connection: Upgrade, HTTP2-Settings",
                "Upgrade: h2c",
                "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
            ],
            "",
        ),
    );
    add(
        "upgrade websocket protected",
        req(
            "GET",
            "/book/ws?t={TAG}",
            &[
                "Connection: Upgrade",
                "Upgrade: websocket",
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Version: 13",
            ],
            "",
        ),
    );
    add("upgrade websocket", req("GET", pub_, &["Connection: Upgrade", "Upgrade: websocket"], ""));
    add("h2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_owned());
    add("h2 preface garbage", format!("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n{}", get("/book/1?t={TAG}")));

    // Request targets.
    add("absolute-form", get("http://gw.test/pub/a?t={TAG}"));
    add("absolute-form protected", get("http://gw.test/book/1?t={TAG}"));
    add("absolute-form encoded", get("http://gw.test/%62ook/1?t={TAG}"));
    add("absolute-form https", get("https://gw.test/pub/a?t={TAG}"));
    add("absolute-form other host", get("http://evil.test/book/1?t={TAG}"));
    add("absolute-form no path", get("http://gw.test?t={TAG}"));
    add("authority-form", "CONNECT gw.test:443 HTTP/1.1\r\nHost: gw.test:443\r\n\r\n".to_owned());
    add("asterisk OPTIONS", "OPTIONS * HTTP/1.1\r\nHost: gw.test\r\n\r\n".to_owned());
    add("asterisk GET", "GET * HTTP/1.1\r\nHost: gw.test\r\n\r\n".to_owned());
    add("fragment", get("/pub/a?t={TAG}#/../book/1"));
    add("empty target", "GET  HTTP/1.1\r\nHost: gw.test\r\n\r\n".to_owned());

    // Methods.
    add("CONNECT origin-form", get(pub_).replacen("GET", "CONNECT", 1));
    add("CONNECT protected", get("/book/1?t={TAG}").replacen("GET", "CONNECT", 1));
    add("TRACE", get(pub_).replacen("GET", "TRACE", 1));
    add("TRACK", get(pub_).replacen("GET", "TRACK", 1));
    add("lowercase get", get(pub_).replacen("GET", "get", 1));
    add("lowercase get protected", get("/book/1?t={TAG}").replacen("GET", "get", 1));
    add("PROPFIND", get(pub_).replacen("GET", "PROPFIND", 1));
    add("PATCH body", req("PATCH", pub_, &["Content-Length: 2"], "{}"));
    add("DELETE protected", req("DELETE", "/book/1?t={TAG}", &[], ""));
    add("OPTIONS protected", req("OPTIONS", "/api/v1/reservations?t={TAG}", &[], ""));
    add("bad method char", get(pub_).replacen("GET", "GE(T", 1));
    add("lowercase trace", get(pub_).replacen("GET", "trace", 1));
    add("mixed-case connect", get("/book/1?t={TAG}").replacen("GET", "Connect", 1));

    // Paths: every spelling of a protected resource, and ambiguous ones.
    for path in [
        "/%62ook/1",
        "/api/v1/%72eservations",
        "/%61pi/v1/reservations",
        "/%41PI/v1/reservations",
        "/BOOK/1",
        "/Book/1",
        "/api/V1/Reservations",
        "/book;x/1",
        "/book;/1",
        "/api;a/v1/reservations",
        "/api/v1/reservations;x",
        "/book/..;/book/1",
        "/x/..;/book/1",
        "/x/../book/1",
        "/x/%2e%2e/book/1",
        "/x/%2E./book/1",
        "/x/.%2e/book/1",
        "/book%2f1",
        "/book%2F1",
        "/%2fbook/1",
        "/book%5c1",
        "/book\\1",
        "//book/1",
        "/./book/1",
        "/book/./1",
        "/%2562ook/1",
        "/%25%36%32ook/1",
        "/book%00/1",
        "/book%20/1",
        "/bo%6Fk/1",
        "/bo%6fk/1",
        "/api/v1/reservations%3f/x",
        "/api/v1//reservations",
        "/api/v1/reservations/../reservations",
        "/%c0%afbook/1",
        "/%c0%ae%c0%ae/book/1",
        "/..%2fbook/1",
        "/pub/..%2f..%2fbook/1",
        "/pub/%2e%2e/%2e%2e/book/1",
        "/../book/1",
        "/book/1/..",
        "/book",
        "/book%3b/1",
        "/%u0062ook/1",
        "/b%6F%6Fk/1",
        "/api%2fv1%2freservations",
        "/api/v1/reservations%00",
        "/ book/1",
        "/x/..%3B/book/1",
        "/x/..%3b/book/1",
        "/x/..%20/book/1",
        "/x/.../book/1",
        "/book%E0%80%AF1",
        "/book%F0%80%80%AF1",
        "/boo%E2%84%AA/1",
        "/api/v1/re%C5%BFervations",
        "/%EF%BD%82%EF%BD%8F%EF%BD%8F%EF%BD%8B/1",
        "/book%EF%BC%8F1",
    ] {
        add(&format!("path {path}"), get(&format!("{path}?t={{TAG}}")));
    }

    // First requests shaped like an event stream (a connection of their own): the same
    // screen applies. Without a query these cannot carry a tag; none may reach the upstream.
    for target in [
        "/api/v1/rooms/../../../book/1#/events",
        "/api/v1/rooms/../reservations#/events",
        "/api/v1/rooms/../reservations/events",
        "/api/v1/rooms/%2e%2e/%2e%2e/%2e%2e/book/x/events",
        "/api/v1/rooms/..%2f..%2f..%2fbook/x/events",
        "/api/v1/rooms/..\\..\\..\\book\\x/events",
        "/api/v1/rooms/%2E%2E/%2E%2E/%2E%2E/%62ook/x/events",
    ] {
        add(&format!("events lane {target}"), get(target));
    }
    for (name, line) in [
        ("events lane underscore", "X_Admission_Token: forged"),
        ("events lane Connection: content-length", "Connection: content-length"),
        ("events lane two hosts", "Host: evil"),
    ] {
        add(name, req("GET", "/api/v1/rooms/../../../book/1#/events", &[line], ""));
    }

    // Forged and underscored headers.
    add("underscore token pub", req("GET", pub_, &["X_Admission_Token: forged"], ""));
    add("underscore token protected", req("GET", "/book/1?t={TAG}", &["X_Admission_Token: forged"], ""));
    add("underscore forwarded", req("GET", pub_, &["X_Forwarded_For: 6.6.6.6", "X_Real_IP: 6.6.6.6"], ""));
    add("forged token pub", req("GET", pub_, &["X-Admission-Token: forged"], ""));
    add("forged token protected", req("GET", "/book/1?t={TAG}", &["X-Admission-Token: forged"], ""));
    add("forged replay marker", req("GET", pub_, &["X-Gate-Replay: v1;x.1-0.aaaa;9999999999;00"], ""));
    add(
        "spoofed forwarded",
        req(
            "GET",
            pub_,
            &["X-Forwarded-For: 6.6.6.6", "X-Forwarded-Proto: https", "X-Forwarded-Host: evil"],
            "",
        ),
    );
    add(
        "forged cookie",
        req(
            "GET",
            "/book/1?t={TAG}",
            &["Cookie: wr_hot=00000000000000000000000000000000.sig; wr_admission_hot=x.y.z"],
            "",
        ),
    );
    add(
        "forged cookie and token",
        req("GET", "/book/1?t={TAG}", &["Cookie: wr_admission_hot=a.b.c", "X-Admission-Token: a.b.c"], ""),
    );
    add("X-Original-URL", req("GET", pub_, &["X-Original-URL: /book/1", "X-Rewrite-URL: /book/1"], ""));
    add("Authorization bearer", req("GET", "/book/1?t={TAG}", &["Authorization: Bearer a.b.c"], ""));

    // Host and version.
    add("two hosts", req("GET", pub_, &["Host: evil.test"], ""));
    add("no host", "GET /pub/a?t={TAG} HTTP/1.1\r\n\r\n".to_owned());
    add("host with path", "GET /pub/a?t={TAG} HTTP/1.1\r\nHost: gw.test/../book\r\n\r\n".to_owned());
    add("HTTP/1.0", "GET /pub/a?t={TAG} HTTP/1.0\r\nHost: gw.test\r\n\r\n".to_owned());
    add(
        "HTTP/1.0 keep-alive pipelined",
        "GET /pub/a?t={TAG} HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /pub/b?t={TAG} HTTP/1.0\r\n\r\n"
            .to_owned(),
    );
    add("HTTP/1.0 protected", "GET /book/1?t={TAG} HTTP/1.0\r\n\r\n".to_owned());
    add("HTTP/0.9", "GET /pub/a?t={TAG}\r\n".to_owned());
    add("HTTP/2.0 line", "GET /pub/a?t={TAG} HTTP/2.0\r\nHost: gw.test\r\n\r\n".to_owned());
    add("HTTP/1.2", "GET /pub/a?t={TAG} HTTP/1.2\r\nHost: gw.test\r\n\r\n".to_owned());
    add("lowercase version", "GET /pub/a?t={TAG} http/1.1\r\nHost: gw.test\r\n\r\n".to_owned());
    add("double space", "GET  /pub/a?t={TAG} HTTP/1.1\r\nHost: gw.test\r\n\r\n".to_owned());
    add("tab separated", "GET\t/pub/a?t={TAG}\tHTTP/1.1\r\nHost: gw.test\r\n\r\n".to_owned());
    add(
        "HTTP/1.0 CL body smuggle",
        format!("POST /pub/a?t={{TAG}} HTTP/1.0\r\nContent-Length: 5\r\n\r\n{hidden}"),
    );
    c
}

// ---- the independent checks ---------------------------------------------------------------

/// Whether any backend could read `target` as a path under a protected prefix: decoded
/// until nothing changes, `\` as `/`, case folded, `;` parameters dropped, empty segments
/// merged, dot segments resolved (clamped at the root, as lenient servers do).
fn reaches_protected(target: &str) -> bool {
    let mut path = target.to_owned();
    if let Some(rest) = path.strip_prefix("http://").or_else(|| path.strip_prefix("https://")) {
        path = rest.find('/').map_or("/".to_owned(), |i| rest[i..].to_owned());
    }
    let mut path = path.split(['?', '#']).next().unwrap_or("").to_owned();
    for _ in 0..4 {
        let decoded = percent_decode(&path);
        if decoded == path {
            break;
        }
        path = decoded;
    }
    let path = path.replace('\\', "/").to_ascii_lowercase();
    let mut segs: Vec<&str> = vec![];
    for seg in path.split('/') {
        match seg.split(';').next().unwrap_or("").trim() {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    let dir = if path.ends_with('/') && !segs.is_empty() { "/" } else { "" };
    let resolved = format!("/{}{dir}", segs.join("/"));
    PROTECTED.iter().any(|p| resolved.starts_with(p))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 3 <= b.len()
            && let Ok(v) = u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    // Overlong encodings of `/` and `.` as a lax decoder reads them.
    String::from_utf8_lossy(&out).replace("\u{fffd}\u{fffd}", "/")
}

/// A logged request as both gateways must have sent it: method, target, headers by name
/// (values in order; `host` is each upstream's own), body.
type Normal = (String, String, BTreeMap<String, Vec<Vec<u8>>>, Vec<u8>);

fn normal(l: &Logged) -> Normal {
    let mut headers: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for (n, v) in &l.headers {
        if n != "host" {
            headers.entry(n.clone()).or_default().push(v.clone());
        }
    }
    (l.method.clone(), l.target.clone(), headers, l.body.clone())
}

/// What one case did on one gateway.
struct Outcome {
    answers: Answers,
    logged: Vec<Logged>,
}

/// Checks one case's outcome on one gateway; the failures, in words.
fn check(name: &str, tag: &str, lane: &str, up: &LoggingUpstream, o: &Outcome) -> Vec<String> {
    let mut bad = vec![];
    let mut fail = |what: String| bad.push(format!("[{lane}] {name}: {what}"));
    for l in &o.logged {
        if let Some(why) = &l.malformed {
            fail(format!(
                "the upstream got a malformed message ({why}): {:?}",
                String::from_utf8_lossy(&l.raw)
            ));
        }
        if reaches_protected(&l.target) {
            fail(format!("{} {} reached the backend without an admission", l.method, l.target));
        }
        for forged in ["x-admission-token", "x-gate-replay", "x-original-url", "x-rewrite-url"] {
            if l.header(forged).is_some() {
                fail(format!("the backend got {forged}"));
            }
        }
        if l.header("host") != Some(up.addr.to_string().as_bytes()) {
            fail(format!("Host {:?} is not the upstream's", l.header("host").map(String::from_utf8_lossy)));
        }
        if l.header("x-forwarded-for") != Some(b"127.0.0.1") {
            fail(format!("X-Forwarded-For {:?}", l.header("x-forwarded-for").map(String::from_utf8_lossy)));
        }
    }
    // The client's answers from the upstream are exactly the upstream's answers to its
    // requests, in order, and no one else's.
    let got: Vec<(u64, String)> = o
        .answers
        .answers
        .iter()
        .filter_map(|a| Some((a.header("x-echo-seq")?.parse().ok()?, a.header("x-echo-target")?.to_owned())))
        .collect();
    let sent: Vec<(u64, String)> = o
        .logged
        .iter()
        .filter(|l| l.malformed.is_none() && !l.aborted)
        .map(|l| (l.seq, l.target.clone()))
        .collect();
    for (_, target) in &got {
        if tag_of(target) != Some(tag) {
            fail(format!("got the answer to someone else's request {target}"));
        }
    }
    if got != sent {
        fail(format!("answers {got:?} but the upstream answered {sent:?}"));
    }
    if name.starts_with("h2 ") {
        // Answered in HTTP/2 frames, not HTTP/1 responses.
        return bad;
    }
    if let Some(why) = &o.answers.broken {
        fail(format!("the client read {why}: {:?}", String::from_utf8_lossy(&o.answers.rest)));
    }
    bad
}

// ---- running it -------------------------------------------------------------------------

/// Runs every case on `gw` (tags `{prefix}{index}`), `dribble`: sent a few bytes at a time.
async fn run_corpus(
    gw: std::net::SocketAddr,
    cases: &[(String, String)],
    prefix: &str,
    dribble: bool,
) -> Vec<Vec<u8>> {
    let permits = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = vec![];
    for (i, (_, bytes)) in cases.iter().enumerate() {
        let bytes = bytes.replace("{TAG}", &tag(prefix, i));
        let permits = permits.clone();
        tasks.push(tokio::spawn(async move {
            let _p = permits.acquire().await.unwrap();
            if dribble {
                dribbled(gw, bytes.as_bytes()).await
            } else {
                exchange(gw, bytes.as_bytes(), Duration::from_millis(700), Duration::from_secs(6)).await
            }
        }));
    }
    let mut out = vec![];
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Sends `bytes` 7 at a time with pauses (heads and bodies split across reads), then reads.
async fn dribbled(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.set_nodelay(true);
    for piece in bytes.chunks(7).take(400) {
        if s.write_all(piece).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    if bytes.len() > 7 * 400 {
        let _ = s.write_all(&bytes[7 * 400..]).await;
    }
    let mut out = vec![];
    let mut chunk = [0u8; 16384];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(700), s.read(&mut chunk)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&chunk[..n]);
    }
    out
}

/// Case `i`'s tag: as long as `{TAG}`.
fn tag(prefix: &str, i: usize) -> String {
    format!("{prefix}{i:04}")
}

/// HEAD requests' answers have no body: the i-th request of a case is a HEAD.
fn heads_of(bytes: &str) -> Vec<bool> {
    bytes.split("\r\n\r\n").map(|r| r.trim_start().starts_with("HEAD ")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_corpus_reaches_nothing_protected_and_both_lanes_agree() {
    let cases = corpus();
    assert!(cases.len() >= 150, "the corpus has {} cases", cases.len());
    let ((fast, fast_up), (slow, slow_up)) = (gateway(true).await, gateway(false).await);
    let mut failures = vec![];
    for (prefix, dribble) in [("w", false), ("d", true)] {
        let (on, off) = tokio::join!(
            run_corpus(fast.addr, &cases, prefix, dribble),
            run_corpus(slow.addr, &cases, prefix, dribble)
        );
        // Anything still in flight lands in the logs before they are read.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (fast_log, slow_log) = (fast_up.entries(), slow_up.entries());
        for (i, (name, bytes)) in cases.iter().enumerate() {
            let tag = tag(prefix, i);
            let heads = heads_of(bytes);
            let mine = |log: &[Logged]| -> Vec<Logged> {
                log.iter().filter(|l| l.tag() == Some(tag.as_str())).cloned().collect()
            };
            let a = Outcome { answers: answers(&on[i], &heads), logged: mine(&fast_log) };
            let b = Outcome { answers: answers(&off[i], &heads), logged: mine(&slow_log) };
            let name = format!("{name} ({})", if dribble { "dribbled" } else { "whole" });
            failures.extend(check(&name, &tag, "fast lane", &fast_up, &a));
            failures.extend(check(&name, &tag, "hyper", &slow_up, &b));
            let (na, nb): (Vec<Normal>, Vec<Normal>) =
                (a.logged.iter().map(normal).collect(), b.logged.iter().map(normal).collect());
            if na != nb {
                failures
                    .push(format!("{name}: the upstream saw {na:?} from the fast lane, {nb:?} from hyper"));
            }
            let statuses = |o: &Outcome| o.answers.answers.iter().map(|a| a.status).collect::<Vec<_>>();
            // A connection one side closes without a word and the other answers `400` is
            // the same refusal.
            let (sa, sb) = (statuses(&a), statuses(&b));
            let refused = |v: &[u16]| v.iter().all(|s| *s >= 400);
            let silent = (sa.is_empty() && refused(&sb)) || (sb.is_empty() && refused(&sa));
            if statuses(&a) != statuses(&b) && !silent {
                failures.push(format!(
                    "{name}: statuses {:?} (fast lane) vs {:?} (hyper)",
                    statuses(&a),
                    statuses(&b)
                ));
            }
        }
        // Every message either upstream got belongs to a case of this round or an earlier one.
        for (lane, log) in [("fast lane", &fast_log), ("hyper", &slow_log)] {
            for l in log.iter().filter(|l| l.tag().is_none()) {
                failures.push(format!(
                    "[{lane}] an unattributable message: {:?}",
                    String::from_utf8_lossy(&l.raw)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    fast.stop().await.unwrap();
    slow.stop().await.unwrap();
}

/// An honest client on one kept-alive connection: `rounds` requests (some pipelined in
/// threes, some with bodies), each answer checked to be the answer to its own request.
/// `cookie`: an admitted buyer's cookies, for the protected `/vip/` path.
async fn honest(
    addr: std::net::SocketAddr,
    id: usize,
    cookie: Option<String>,
    rounds: usize,
) -> Result<(), String> {
    let mut s = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (dir, tag) = match &cookie {
        Some(_) => ("vip", format!("v{id:04}")),
        None => ("pub", format!("h{id:04}")),
    };
    let cookie_line = cookie.map(|c| format!("Cookie: {c}")).unwrap_or_default();
    let mut buf = vec![];
    for round in 0..rounds {
        let batch = if round % 5 == 4 { 3 } else { 1 };
        let mut targets = vec![];
        let mut bytes = String::new();
        for k in 0..batch {
            let target = format!("/{dir}/{id}/{round}/{k}?t={tag}");
            let lines: Vec<&str> = [cookie_line.as_str()].into_iter().filter(|l| !l.is_empty()).collect();
            bytes += &if round % 3 == 1 {
                let mut lines = lines.clone();
                lines.push("Content-Length: 7");
                req("POST", &target, &lines, "payload")
            } else {
                req("GET", &target, &lines, "")
            };
            targets.push(target);
        }
        s.write_all(bytes.as_bytes()).await.map_err(|e| e.to_string())?;
        let got = read_answers(&mut s, &mut buf, batch).await?;
        for (a, target) in got.iter().zip(&targets) {
            if a.status != 200 || a.header("x-echo-target") != Some(target.as_str()) {
                return Err(format!(
                    "client {tag} sent {target} and got {} echoing {:?}",
                    a.status,
                    a.header("x-echo-target")
                ));
            }
        }
    }
    Ok(())
}

/// Reads until `buf` holds `n` whole responses; takes them out of it.
async fn read_answers(
    s: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    n: usize,
) -> Result<Vec<common::raw::Answer>, String> {
    let mut chunk = [0u8; 16384];
    loop {
        let parsed = answers(buf, &[]);
        if parsed.answers.len() >= n && parsed.broken.is_none() {
            buf.clear();
            return Ok(parsed.answers);
        }
        if parsed.answers.len() > n {
            return Err(format!("{} answers to {n} requests", parsed.answers.len()));
        }
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await {
            Ok(Ok(k)) if k > 0 => buf.extend_from_slice(&chunk[..k]),
            other => return Err(format!("no answer ({other:?}) after {:?}", String::from_utf8_lossy(buf))),
        }
    }
}

/// An admitted buyer's cookies for room `open` on `addr`.
async fn admitted_cookies(addr: std::net::SocketAddr) -> String {
    let mut http = Http::new(addr);
    let joined = http.post("/api/v1/rooms/open/tickets").await;
    let ticket = joined.json()["ticket"].as_str().unwrap().to_owned();
    let status = http.get(&format!("/api/v1/rooms/open/tickets/{ticket}")).await;
    assert_eq!(status.json()["state"], "admitted", "{}", status.text);
    assert!(http.cookies.contains_key("wr_admission_open"), "{:?}", http.cookies);
    http.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn attackers_and_honest_clients_at_once_each_honest_client_gets_its_own_answers() {
    let cases = Arc::new(corpus());
    let mut failures = vec![];
    let gateways = [gateway(true).await, gateway(false).await];
    for (gw, _) in &gateways {
        let mut http = Http::new(gw.addr);
        let open =
            json!({"protect": ["/vip/"], "target": "/vip/", "free_pass": 100_000, "max_active": 100_000});
        put_room(&mut http, "open", open).await;
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (lane, (gw, up)) in ["fast lane", "hyper"].into_iter().zip(&gateways) {
        for k in 0..100 {
            let (addr, cases, up) = (gw.addr, cases.clone(), up.clone());
            tasks.spawn(async move {
                let mut bad = vec![];
                for (round, prefix) in ["x", "y", "z"].into_iter().enumerate() {
                    let i = (k + 100 * round) % cases.len();
                    let tag = tag(prefix, i);
                    let bytes = cases[i].1.replace("{TAG}", &tag);
                    let got =
                        exchange(addr, bytes.as_bytes(), Duration::from_millis(700), Duration::from_secs(6))
                            .await;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let logged = up.entries().into_iter().filter(|l| l.tag() == Some(tag.as_str())).collect();
                    let o = Outcome { answers: answers(&got, &heads_of(&cases[i].1)), logged };
                    bad.extend(check(&cases[i].0, &tag, lane, &up, &o));
                }
                bad
            });
        }
        for id in 0..50 {
            let addr = gw.addr;
            tasks.spawn(async move {
                let cookie = if id % 2 == 0 { Some(admitted_cookies(addr).await) } else { None };
                match honest(addr, id, cookie, 30).await {
                    Ok(()) => vec![],
                    Err(e) => vec![format!("[{lane}] {e}")],
                }
            });
        }
    }
    while let Some(done) = tasks.join_next().await {
        failures.extend(done.unwrap());
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    for (gw, up) in gateways {
        // The honest ones' requests all reached the backend, the admitted ones' with a token.
        let log = up.entries();
        let vip = log.iter().filter(|l| l.target.starts_with("/vip/")).collect::<Vec<_>>();
        let per_client: usize = (0..30).map(|round| if round % 5 == 4 { 3 } else { 1 }).sum();
        assert_eq!(vip.len(), 25 * per_client, "admitted requests at the backend");
        assert!(vip.iter().all(|l| l.header("x-admission-token").is_some()));
        gw.stop().await.unwrap();
    }
}
