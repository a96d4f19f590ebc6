//! Close frames: the code and a reason cut to fit a control frame.

use yawc::close::CloseCode;
use yawc::frame::Frame;

/// Most bytes of a close reason: a control frame's payload is at most 125 bytes, two of
/// which are the code (RFC 6455 §5.5).
const MAX_CLOSE_REASON_BYTES: usize = 123;

/// `reason` cut to [`MAX_CLOSE_REASON_BYTES`] on a character boundary (it must stay UTF-8).
pub(super) fn close_reason(reason: &str) -> &str {
    if reason.len() <= MAX_CLOSE_REASON_BYTES {
        return reason;
    }
    let mut end = MAX_CLOSE_REASON_BYTES;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

pub(super) fn close_frame(code: CloseCode, reason: &str) -> Frame {
    Frame::close(code, close_reason(reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_fit_a_control_frame_and_stay_utf8() {
        assert_eq!(close_reason("short"), "short");
        let ascii = "x".repeat(300);
        assert_eq!(close_reason(&ascii).len(), 123);
        // 'é' is two bytes: 61 of them are 122 bytes, the 62nd would straddle byte 123.
        let accented = "é".repeat(100);
        let cut = close_reason(&accented);
        assert_eq!(cut.len(), 122);
        assert!(accented.starts_with(cut));
        let frame = close_frame(CloseCode::Policy, &accented);
        assert!(frame.payload().len() <= 125, "{}", frame.payload().len());
    }
}
