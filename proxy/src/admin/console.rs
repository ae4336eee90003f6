//! The admin web console: one page, its script and its stylesheet, compiled into the binary
//! and served by the admin listener beside the API. The files are static and public; the
//! page asks for a token and sends it with each `/v1/...` call, so serving them needs no
//! authentication and reveals nothing about the site.
//!
//! The script and the stylesheet are separate files so that the page runs under a strict
//! Content-Security-Policy (nothing inline, nothing from elsewhere, no framing). Nothing is
//! fetched from the internet: the console works on an isolated admin network.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX_HTML: &str = include_str!("console/index.html");
const CONSOLE_JS: &str = include_str!("console/console.js");
const CONSOLE_CSS: &str = include_str!("console/console.css");

/// Only this origin's files, no inline code, no `<base>` games, no form posts anywhere, no
/// framing (clickjacking of the switch buttons).
const CSP: &str = "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `GET /`, `/console.js` and `/console.css`, for any router state.
pub fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route(
            "/",
            get(|| async { asset(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/console.js",
            get(|| async { asset(CONSOLE_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/console.css",
            get(|| async { asset(CONSOLE_CSS, "text/css; charset=utf-8") }),
        )
}

/// `body` as `content_type`, with the headers every console file carries.
fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        // A new build's console is picked up at once, never mixed with an old script.
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// The raw HTTP/1.0 answer of the console router to `GET path`.
    async fn get_raw(path: &str) -> String {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(tcp, router::<()>().into_make_service())
                .await
                .unwrap();
        });
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: levee\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        server.abort();
        answer
    }

    fn header<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
        let (head, _) = answer.split_once("\r\n\r\n")?;
        head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    #[tokio::test]
    async fn every_file_is_served_with_its_type_and_the_security_headers() {
        for (path, content_type, marker) in [
            (
                "/",
                "text/html; charset=utf-8",
                "<title>levee console</title>",
            ),
            (
                "/console.js",
                "text/javascript; charset=utf-8",
                "sessionStorage",
            ),
            ("/console.css", "text/css; charset=utf-8", "@media"),
        ] {
            let answer = get_raw(path).await;
            assert!(answer.starts_with("HTTP/1.0 200"), "{path}: {answer:.200}");
            assert_eq!(
                header(&answer, "content-type"),
                Some(content_type),
                "{path}"
            );
            let csp = header(&answer, "content-security-policy").unwrap();
            assert!(
                csp.starts_with("default-src 'self';") && csp.contains("frame-ancestors 'none'"),
                "{path}: {csp}"
            );
            assert_eq!(header(&answer, "x-content-type-options"), Some("nosniff"));
            assert_eq!(header(&answer, "referrer-policy"), Some("no-referrer"));
            assert_eq!(header(&answer, "cache-control"), Some("no-store"));
            assert!(answer.contains(marker), "{path}: no {marker:?}");
        }
    }

    /// Whether `html` has an attribute like ` onclick=`.
    fn has_inline_handler(html: &str) -> bool {
        html.match_indices(" on").any(|(at, _)| {
            let rest = &html[at + 3..];
            let name = rest.len()
                - rest
                    .trim_start_matches(|c: char| c.is_ascii_lowercase())
                    .len();
            name > 0 && rest[name..].starts_with('=')
        })
    }

    #[test]
    fn the_page_has_nothing_inline_and_loads_nothing_from_elsewhere() {
        // The CSP would block these in the browser; catch them here, where it is clearer.
        assert!(!INDEX_HTML.contains("<style"), "inline style element");
        assert!(!INDEX_HTML.contains(" style="), "inline style attribute");
        assert!(!has_inline_handler(INDEX_HTML), "inline event handler");
        assert_eq!(INDEX_HTML.matches("<script").count(), 1);
        assert!(INDEX_HTML.contains(r#"<script src="/console.js" defer></script>"#));
        for file in [INDEX_HTML, CONSOLE_JS, CONSOLE_CSS] {
            assert!(!file.contains("http://") && !file.contains("https://"));
            assert!(
                !file.contains("innerHTML"),
                "server text must go in as text"
            );
        }
        assert!(INDEX_HTML.contains(r#"name="viewport""#));
        // The token lives in the tab's session storage only.
        assert!(!CONSOLE_JS.contains("localStorage."));
    }
}
