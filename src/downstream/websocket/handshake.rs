//! The RFC 6455 opening handshake, the subprotocol choice and the RFC 7692
//! permessage-deflate negotiation.

use std::borrow::Cow;

use base64::Engine;
use pingora_http::RequestHeader;
use sha1::{Digest, Sha1};

use crate::downstream::wire::websocket::WindowBits;

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why an upgrade request is refused, as an HTTP status and a reason.
#[derive(Debug, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub reason: Cow<'static, str>,
}

fn reject(status: u16, reason: &'static str) -> Rejection {
    Rejection {
        status,
        reason: Cow::Borrowed(reason),
    }
}

/// A valid upgrade: the `Sec-WebSocket-Accept` value, the agreed extension and the chosen
/// subprotocol, if any.
#[derive(Debug, PartialEq, Eq)]
pub struct Accepted {
    pub accept: String,
    pub deflate: Option<Deflate>,
    /// The `Sec-WebSocket-Protocol` response value.
    pub subprotocol: Option<String>,
}

/// An agreed permessage-deflate.
#[derive(Debug, PartialEq, Eq)]
pub struct Deflate {
    /// The `Sec-WebSocket-Extensions` response value (also handed to the WebSocket crate).
    pub response: String,
    /// The window the server deflates this client's messages with.
    pub window: WindowBits,
}

fn header_values<'a>(request: &'a RequestHeader, name: &str) -> impl Iterator<Item = &'a str> {
    request
        .headers
        .get_all(name)
        .into_iter()
        .filter_map(|value| value.to_str().ok())
}

fn has_token(request: &RequestHeader, name: &str, token: &str) -> bool {
    header_values(request, name).any(|value| {
        value
            .split(',')
            .any(|item| item.trim().eq_ignore_ascii_case(token))
    })
}

/// Checks the upgrade request, chooses a subprotocol from `subprotocols` (the topic's
/// `websocket.subprotocols`) and negotiates compression (`allow_deflate` = the topic's
/// `deflate` setting).
pub fn accept(
    request: &RequestHeader,
    allow_deflate: bool,
    subprotocols: &[String],
) -> Result<Accepted, Rejection> {
    if request.method != http::Method::GET {
        return Err(reject(405, "a WebSocket upgrade must be a GET"));
    }
    if !has_token(request, "upgrade", "websocket") || !has_token(request, "connection", "upgrade") {
        return Err(reject(
            400,
            "a WebSocket upgrade needs `Upgrade: websocket` and `Connection: Upgrade`",
        ));
    }
    if header_values(request, "sec-websocket-version").next() != Some("13") {
        return Err(reject(426, "only WebSocket version 13 is supported"));
    }
    let key = header_values(request, "sec-websocket-key")
        .next()
        .unwrap_or("")
        .trim();
    let key_is_valid = base64::engine::general_purpose::STANDARD
        .decode(key)
        .is_ok_and(|decoded| decoded.len() == 16);
    if !key_is_valid {
        return Err(reject(400, "`Sec-WebSocket-Key` must be 16 bytes in base64"));
    }
    let subprotocol = choose_subprotocol(request, subprotocols)?;
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(GUID.as_bytes());
    let accept = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
    let deflate = if allow_deflate {
        header_values(request, "sec-websocket-extensions")
            .flat_map(|value| value.split(','))
            .find_map(negotiate_offer)
    } else {
        None
    };
    Ok(Accepted {
        accept,
        deflate,
        subprotocol,
    })
}

/// The first subprotocol the client offers that is in `served`, to be echoed in the `101`.
/// A client offering none gets none. With a list configured, a client offering only others
/// is refused (a browser would fail the connection anyway, RFC 6455 §4.1: better a status
/// and a reason). With no list, offers are ignored and no subprotocol is answered.
fn choose_subprotocol(request: &RequestHeader, served: &[String]) -> Result<Option<String>, Rejection> {
    let mut offered = header_values(request, "sec-websocket-protocol")
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|offer| !offer.is_empty())
        .peekable();
    if served.is_empty() || offered.peek().is_none() {
        return Ok(None);
    }
    // Subprotocol names are compared as written: they are case-sensitive tokens.
    match offered.find(|offer| served.iter().any(|name| name == offer)) {
        Some(chosen) => Ok(Some(chosen.to_string())),
        None => Err(Rejection {
            status: 400,
            reason: Cow::Owned(format!(
                "none of the offered subprotocols (`Sec-WebSocket-Protocol`) is served here; offer one of: {}",
                served.join(", ")
            )),
        }),
    }
}

/// The agreement for one permessage-deflate offer, or `None` to decline it.
///
/// The server always answers `server_no_context_takeover`: each hub message is then
/// compressed once per window size, independently, and the same bytes are valid for every
/// client that negotiated that window. An offer asking for `server_max_window_bits` from 9
/// to 14 gets it (and the answer names it); one asking for 8 is declined, since zlib cannot
/// deflate raw data with a 256-byte window (RFC 7692 §7.1.2.1 lets a server decline what it
/// cannot honour). `client_max_window_bits` is never constrained: the server's inflater
/// accepts any window, so the parameter is left out of the answer (§7.1.2.2).
fn negotiate_offer(offer: &str) -> Option<Deflate> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut seen: Vec<String> = Vec::new();
    let mut client_no_context_takeover = false;
    let mut window = WindowBits::FULL;
    for parameter in parts {
        let (name, value) = match parameter.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (parameter, None),
        };
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return None; // RFC 7692 §7: a repeated parameter makes the offer invalid.
        }
        seen.push(name.clone());
        match (name.as_str(), value) {
            ("server_no_context_takeover", None) => {}
            ("client_no_context_takeover", None) => client_no_context_takeover = true,
            ("server_max_window_bits", Some(bits)) => window = WindowBits::new(bits.parse::<u8>().ok()?)?,
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(bits)) => {
                if !(8..=15).contains(&bits.parse::<u8>().ok()?) {
                    return None;
                }
            }
            _ => return None,
        }
    }
    let mut response = String::from("permessage-deflate; server_no_context_takeover");
    if window != WindowBits::FULL {
        response.push_str(&format!("; server_max_window_bits={}", window.get()));
    }
    if client_no_context_takeover {
        response.push_str("; client_no_context_takeover");
    }
    Some(Deflate { response, window })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(extensions: Option<&str>) -> RequestHeader {
        let mut request = RequestHeader::build("GET", b"/ws", None).expect("valid");
        request.insert_header("Upgrade", "websocket").expect("valid");
        request
            .insert_header("Connection", "keep-alive, Upgrade")
            .expect("valid");
        request
            .insert_header("Sec-WebSocket-Version", "13")
            .expect("valid");
        request
            .insert_header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
            .expect("valid");
        if let Some(extensions) = extensions {
            request
                .insert_header("Sec-WebSocket-Extensions", extensions)
                .expect("valid");
        }
        request
    }

    fn deflate(extensions: &str) -> Option<String> {
        accept(&request(Some(extensions)), true, &[])
            .expect("valid")
            .deflate
            .map(|deflate| deflate.response)
    }

    #[test]
    fn computes_the_rfc_6455_example_accept_key() {
        let accepted = accept(&request(None), true, &[]).expect("valid upgrade");
        assert_eq!(accepted.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(accepted.deflate, None);
        assert_eq!(accepted.subprotocol, None);
    }

    #[test]
    fn negotiates_deflate_with_server_no_context_takeover() {
        assert_eq!(
            deflate("permessage-deflate; client_max_window_bits").as_deref(),
            Some("permessage-deflate; server_no_context_takeover")
        );
        assert_eq!(
            deflate("permessage-deflate; client_no_context_takeover").as_deref(),
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
        );
        let disabled = accept(&request(Some("permessage-deflate")), false, &[]).expect("valid");
        assert_eq!(disabled.deflate, None);
    }

    #[test]
    fn accepts_smaller_server_windows_and_names_them() {
        for bits in 9..=14u8 {
            let accepted = accept(
                &request(Some(&format!(
                    "permessage-deflate; server_max_window_bits={bits}; client_max_window_bits"
                ))),
                true,
                &[],
            )
            .expect("valid");
            let deflate = accepted.deflate.expect("negotiated");
            assert_eq!(deflate.window, WindowBits::new(bits).expect("in range"));
            assert_eq!(
                deflate.response,
                format!("permessage-deflate; server_no_context_takeover; server_max_window_bits={bits}")
            );
        }
        let full = accept(
            &request(Some("permessage-deflate; server_max_window_bits=15")),
            true,
            &[],
        )
        .expect("valid")
        .deflate
        .expect("negotiated");
        assert_eq!(full.window, WindowBits::FULL);
        assert_eq!(full.response, "permessage-deflate; server_no_context_takeover");
    }

    #[test]
    fn declines_offers_it_cannot_honour_and_takes_the_next() {
        let offers =
            "permessage-deflate; server_max_window_bits=8, permessage-deflate; client_max_window_bits=12";
        assert_eq!(
            deflate(offers).as_deref(),
            Some("permessage-deflate; server_no_context_takeover")
        );
        for bad in [
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; mystery",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "x-webkit-deflate-frame",
        ] {
            assert_eq!(deflate(bad), None, "{bad}");
        }
    }

    #[test]
    fn chooses_the_first_offered_subprotocol_that_is_served() {
        let served = ["graphql-ws".to_string(), "v2.chat".to_string()];
        let mut offering = request(None);
        offering
            .insert_header("Sec-WebSocket-Protocol", "mqtt, v2.chat, graphql-ws")
            .expect("valid");
        let accepted = accept(&offering, true, &served).expect("valid");
        assert_eq!(accepted.subprotocol.as_deref(), Some("v2.chat"));
        // Offers without a list configured are ignored, as before.
        assert_eq!(accept(&offering, true, &[]).expect("valid").subprotocol, None);
        // No offer, no subprotocol, even with a list.
        assert_eq!(
            accept(&request(None), true, &served).expect("valid").subprotocol,
            None
        );

        let mut unknown = request(None);
        unknown
            .append_header("Sec-WebSocket-Protocol", "mqtt")
            .expect("valid");
        unknown
            .append_header("Sec-WebSocket-Protocol", "V2.CHAT")
            .expect("valid");
        let refused = accept(&unknown, true, &served).expect_err("refused");
        assert_eq!(refused.status, 400);
        assert!(
            refused.reason.contains("graphql-ws, v2.chat"),
            "{}",
            refused.reason
        );
    }

    #[test]
    fn rejects_bad_upgrades_with_reasons() {
        let mut no_key = request(None);
        no_key.remove_header("Sec-WebSocket-Key");
        assert_eq!(accept(&no_key, true, &[]).err().map(|r| r.status), Some(400));
        let mut old = request(None);
        old.insert_header("Sec-WebSocket-Version", "8").expect("valid");
        assert_eq!(accept(&old, true, &[]).err().map(|r| r.status), Some(426));
        let mut no_upgrade = request(None);
        no_upgrade
            .insert_header("Connection", "keep-alive")
            .expect("valid");
        assert_eq!(accept(&no_upgrade, true, &[]).err().map(|r| r.status), Some(400));
    }
}
