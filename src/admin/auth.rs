//! `server.admin_token`: protects the admin page and `/api/topics`. A request passes with
//! `Authorization: Bearer <admin_token>` or with the cookie the page's login form sets
//! (`POST /login`); the cookie holds a digest of the token, never the token itself.
//! Without `admin_token` both are open (the admin listener is meant for the pod's network).

use http::Response;
use pingora_core::protocols::http::ServerSession;
use sha1::{Digest, Sha1};

use super::{reply, text};
use crate::config::Secret;
use crate::downstream::router::header;

pub const COOKIE: &str = "sidestream_admin";
/// A login form body is a token and little else.
const MAX_LOGIN_BYTES: usize = 4096;

pub struct AdminAuth {
    token: Option<Secret>,
}

/// Compares without an early exit, so response time says nothing about the token.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len() && given.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

fn cookie_value(token: &str) -> String {
    let digest = Sha1::digest(format!("sidestream admin session\0{token}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl AdminAuth {
    pub fn new(token: Option<Secret>) -> Self {
        AdminAuth { token }
    }

    /// Whether the request may see the page and the API.
    pub fn allows(&self, session: &ServerSession) -> bool {
        let Some(expected) = self.token.as_ref().map(Secret::expose) else {
            return true;
        };
        let request = session.req_header();
        if let Some(given) = header(request, "authorization").and_then(|v| v.strip_prefix("Bearer ")) {
            return same_secret(given.trim().as_bytes(), expected.as_bytes());
        }
        let wanted = cookie_value(expected);
        crate::downstream::router::cookies(request)
            .any(|(name, value)| name == COOKIE && same_secret(value.as_bytes(), wanted.as_bytes()))
    }

    /// The `401` for the API (plain text) or the page (the login form).
    pub fn refuse(&self, page: bool) -> Response<Vec<u8>> {
        let mut response = if page {
            reply(401, "text/html; charset=utf-8", LOGIN_FORM)
        } else {
            text(401, "missing or wrong `Authorization: Bearer <admin_token>`")
        };
        response.headers_mut().insert(
            "WWW-Authenticate",
            http::HeaderValue::from_static("Bearer realm=\"sidestream admin\""),
        );
        response
    }

    /// `POST /login` with the form's `token`: sets the session cookie and goes to the page.
    pub async fn login(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let Some(expected) = self.token.as_ref().map(Secret::expose) else {
            return redirect_to_page(None);
        };
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) if body.len() + chunk.len() <= MAX_LOGIN_BYTES => {
                    body.extend_from_slice(&chunk)
                }
                Ok(Some(_)) => return text(413, "the login form is larger than 4 KiB"),
                Ok(None) => break,
                Err(error) => return text(400, &format!("cannot read the login form: {error}")),
            }
        }
        let given = form_urlencoded::parse(&body)
            .find(|(name, _)| name == "token")
            .map(|(_, value)| value.into_owned())
            .unwrap_or_default();
        if !same_secret(given.as_bytes(), expected.as_bytes()) {
            return self.refuse(true);
        }
        redirect_to_page(Some(&cookie_value(expected)))
    }
}

fn redirect_to_page(cookie: Option<&str>) -> Response<Vec<u8>> {
    let mut response = reply(303, "text/plain; charset=utf-8", "to the admin page\n");
    response
        .headers_mut()
        .insert("Location", http::HeaderValue::from_static("/"));
    if let Some(value) = cookie {
        let cookie = format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict");
        if let Ok(value) = http::HeaderValue::from_str(&cookie) {
            response.headers_mut().insert("Set-Cookie", value);
        }
    }
    response
}

const LOGIN_FORM: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sidestream admin: sign in</title>
<style>body{font:15px system-ui,sans-serif;display:grid;place-items:center;height:90vh;background:#f5f6f8}
form{background:#fff;padding:2em;border-radius:8px;box-shadow:0 1px 4px #0002}input{font:inherit;padding:.4em;margin:.4em 0;width:20em}</style>
</head><body><form method="post" action="/login"><h1>sidestream admin</h1>
<label>admin_token<br><input type="password" name="token" autofocus></label><br>
<button type="submit">Sign in</button></form></body></html>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_a_digest_not_the_token() {
        let value = cookie_value("0123456789abcdef");
        assert_eq!(value.len(), 40);
        assert!(!value.contains("0123456789abcdef"));
        assert_ne!(value, cookie_value("0123456789abcdeX"));
        assert!(same_secret(
            value.as_bytes(),
            cookie_value("0123456789abcdef").as_bytes()
        ));
    }
}
