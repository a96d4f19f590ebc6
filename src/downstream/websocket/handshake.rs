//! The RFC 6455 opening handshake and the RFC 7692 permessage-deflate negotiation.

use base64::Engine;
use pingora_http::RequestHeader;
use sha1::{Digest, Sha1};

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why an upgrade request is refused, as an HTTP status and a reason.
#[derive(Debug, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub reason: &'static str,
}

/// A valid upgrade: the `Sec-WebSocket-Accept` value and the agreed extension, if any.
#[derive(Debug, PartialEq, Eq)]
pub struct Accepted {
    pub accept: String,
    /// The `Sec-WebSocket-Extensions` response value (also handed to the WebSocket crate).
    pub deflate: Option<String>,
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

/// Checks the upgrade request and negotiates compression (`allow_deflate` = the topic's
/// `deflate` setting).
pub fn accept(request: &RequestHeader, allow_deflate: bool) -> Result<Accepted, Rejection> {
    if request.method != http::Method::GET {
        return Err(Rejection {
            status: 405,
            reason: "a WebSocket upgrade must be a GET",
        });
    }
    if !has_token(request, "upgrade", "websocket") || !has_token(request, "connection", "upgrade") {
        return Err(Rejection {
            status: 400,
            reason: "a WebSocket upgrade needs `Upgrade: websocket` and `Connection: Upgrade`",
        });
    }
    if header_values(request, "sec-websocket-version").next() != Some("13") {
        return Err(Rejection {
            status: 426,
            reason: "only WebSocket version 13 is supported",
        });
    }
    let key = header_values(request, "sec-websocket-key")
        .next()
        .unwrap_or("")
        .trim();
    let key_is_valid = base64::engine::general_purpose::STANDARD
        .decode(key)
        .is_ok_and(|decoded| decoded.len() == 16);
    if !key_is_valid {
        return Err(Rejection {
            status: 400,
            reason: "`Sec-WebSocket-Key` must be 16 bytes in base64",
        });
    }
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
    Ok(Accepted { accept, deflate })
}

/// The response to one permessage-deflate offer, or `None` to decline it.
///
/// The server always answers `server_no_context_takeover`: each hub message is then
/// compressed once, independently, and the same bytes are valid for every client. An offer
/// that asks the server for a window smaller than 15 bits is declined (the shared
/// compressed bytes use the full window). `client_max_window_bits` is never constrained:
/// the server's inflater accepts any window.
fn negotiate_offer(offer: &str) -> Option<String> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut seen: Vec<String> = Vec::new();
    let mut client_no_context_takeover = false;
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
            ("server_max_window_bits", Some(bits)) => {
                if bits.parse::<u8>().ok()? != 15 {
                    return None;
                }
            }
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
    if client_no_context_takeover {
        response.push_str("; client_no_context_takeover");
    }
    Some(response)
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

    #[test]
    fn computes_the_rfc_6455_example_accept_key() {
        let accepted = accept(&request(None), true).expect("valid upgrade");
        assert_eq!(accepted.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(accepted.deflate, None);
    }

    #[test]
    fn negotiates_deflate_with_server_no_context_takeover() {
        let accepted =
            accept(&request(Some("permessage-deflate; client_max_window_bits")), true).expect("valid");
        assert_eq!(
            accepted.deflate.as_deref(),
            Some("permessage-deflate; server_no_context_takeover")
        );
        let accepted = accept(
            &request(Some("permessage-deflate; client_no_context_takeover")),
            true,
        )
        .expect("valid");
        assert_eq!(
            accepted.deflate.as_deref(),
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
        );
        let disabled = accept(&request(Some("permessage-deflate")), false).expect("valid");
        assert_eq!(disabled.deflate, None);
    }

    #[test]
    fn declines_offers_it_cannot_honour_and_takes_the_next() {
        let offers =
            "permessage-deflate; server_max_window_bits=10, permessage-deflate; client_max_window_bits=12";
        let accepted = accept(&request(Some(offers)), true).expect("valid");
        assert_eq!(
            accepted.deflate.as_deref(),
            Some("permessage-deflate; server_no_context_takeover")
        );
        for bad in [
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; mystery",
            "permessage-deflate; client_max_window_bits=7",
            "x-webkit-deflate-frame",
        ] {
            assert_eq!(
                accept(&request(Some(bad)), true).expect("valid").deflate,
                None,
                "{bad}"
            );
        }
    }

    #[test]
    fn rejects_bad_upgrades_with_reasons() {
        let mut no_key = request(None);
        no_key.remove_header("Sec-WebSocket-Key");
        assert_eq!(accept(&no_key, true).err().map(|r| r.status), Some(400));
        let mut old = request(None);
        old.insert_header("Sec-WebSocket-Version", "8").expect("valid");
        assert_eq!(accept(&old, true).err().map(|r| r.status), Some(426));
        let mut no_upgrade = request(None);
        no_upgrade
            .insert_header("Connection", "keep-alive")
            .expect("valid");
        assert_eq!(accept(&no_upgrade, true).err().map(|r| r.status), Some(400));
    }
}
